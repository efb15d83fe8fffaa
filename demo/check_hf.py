#!/usr/bin/env python3
"""Cross-check the demo models against Hugging Face transformers/tokenizers, where installed.

python3 demo/check_hf.py DEMO_DIR: for each of base/quick/long, encodes a few chat prompts with
both tokenizers (ids must be equal), compares the last-position logits of this project's torch
implementation (demo/train.py) with transformers' Qwen2ForCausalLM, and compares 60-token greedy
continuations token for token.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train as T  # noqa: E402


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    from tokenizers import Tokenizer as HFTok
    from transformers import Qwen2ForCausalLM
    prompts = ["Compute 538+363-595+12.", "Compute 77+45-19.",
               "Compute 904-386+27.\n" + T.INSTRUCTION]
    bad = 0
    for name in ["base", "quick", "long"]:
        md = os.path.join(d, name)
        hft = HFTok.from_file(os.path.join(md, "tokenizer.json"))
        tj = json.load(open(os.path.join(md, "tokenizer.json")))
        merges = [tuple(m) for m in tj["model"]["merges"]]
        tok = T.Tokenizer(merges)
        cfgj = json.load(open(os.path.join(md, "config.json")))
        cfg = T.Cfg(hidden=cfgj["hidden_size"], inter=cfgj["intermediate_size"], layers=cfgj["num_hidden_layers"],
                    heads=cfgj["num_attention_heads"], kv_heads=cfgj["num_key_value_heads"],
                    vocab=cfgj["vocab_size"], eps=cfgj["rms_norm_eps"], rope_theta=cfgj["rope_theta"])
        p = T.load_safetensors(os.path.join(md, "model.safetensors"))
        hf = Qwen2ForCausalLM.from_pretrained(md, torch_dtype=torch.float32).eval()
        for pr in prompts:
            text = T.chat_text(None, pr)
            a = tok.encode(text)
            b = hft.encode(text, add_special_tokens=False).ids
            if a != b:
                bad += 1
                print("%s: token ids differ for %r\n ours %s\n hf   %s" % (name, pr, a, b))
            ids = torch.tensor([a])
            with torch.no_grad():
                ours, _ = T.forward(p, cfg, ids, torch.arange(len(a))[None], T.causal_bias(torch.ones(1, len(a)), len(a), "cpu"))
                ref = hf(ids).logits
            rel = ((ours - ref).abs().max() / ref.abs().max()).item()
            g1 = T.greedy(p, cfg, tok, [a], 60, "cpu")[0]
            g2 = hf.generate(ids, max_new_tokens=60, do_sample=False,
                             eos_token_id=[tok.id("<|im_end|>"), tok.id("<|endoftext|>")])[0, len(a):].tolist()
            g2 = [t for t in g2 if t not in (tok.id("<|im_end|>"), tok.id("<|endoftext|>"))]
            same = g1 == g2[:len(g1)] and len(g1) == len(g2)
            bad += (rel > 1e-4) + (not same)
            print("%s %-40r logits max rel diff %.2e  greedy %s  | %s" % (
                name, pr[:40], rel, "same" if same else "DIFFERENT", tok.decode(g1)[:80].replace("\n", " / ")))
    print("hf check:", "OK" if bad == 0 else "%d problems" % bad)


if __name__ == "__main__":
    main()
