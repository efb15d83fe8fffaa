#!/usr/bin/env python3
"""Writes the engine's golden models and reference outputs (tests/golden/).

Run once by a developer with PyTorch (Debian's python3-torch is enough; no
transformers, numpy or safetensors package is needed); CI never runs it.

For each of three tiny random models it writes a Hugging Face model
directory (config.json, generation_config.json, model.safetensors) and:
  prefill_logits.f32  float32 little-endian [len(prefill_ids) x vocab_size]
  golden.json         the ids, the greedy continuation, and bookkeeping

  qwen2-bf16-tied     Qwen2 (q/k/v biases), BF16 weights, tied lm_head, plus a
                      byte-level tokenizer.json and a ChatML tokenizer_config.json
                      with its own default system prompt, and a chat golden
  llama-f32-untied    Llama with llama3 RoPE scaling (all three frequency bands
                      in use), GQA 4:1, F32 weights, separate lm_head
  qwen3-f16-tied      Qwen3 (q_norm/k_norm, head_dim 32 != hidden/heads,
                      attention_bias true), F16 weights, max_position_embeddings 64

The forward pass below is written from the semantics of transformers'
modeling_qwen2.py, modeling_llama.py and modeling_qwen3.py (RMSNorm in
float32, rotate-half RoPE with HF's inv_freq and _compute_llama3_parameters,
repeat_kv GQA, eager attention with a causal mask and a float32 softmax,
SwiGLU MLP). Weights stored in BF16/F16 are upcast, so the reference runs in
float32 as the engine does; a float64 run checks that every greedy step has a
clear winner, so that rounding cannot flip a token.
"""

import json
import math
import os
import struct
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------- configs

MODELS = [
    {
        "name": "qwen2-bf16-tied",
        "dtype": "bfloat16",
        "seed": 6,
        "config": {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "vocab_size": 272, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 512, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True, "hidden_act": "silu", "torch_dtype": "bfloat16",
            "bos_token_id": 256, "eos_token_id": 256, "use_sliding_window": False,
        },
        "tokenizer": True,
    },
    {
        "name": "llama-f32-untied",
        "dtype": "float32",
        "seed": 2,
        "config": {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": 300, "hidden_size": 64, "intermediate_size": 160,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 1,
            "max_position_embeddings": 2048, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
            "hidden_act": "silu", "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
        },
    },
    {
        "name": "qwen3-f16-tied",
        "dtype": "float16",
        "seed": 3,
        "config": {
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            "vocab_size": 256, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 32, "max_position_embeddings": 64, "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "attention_bias": True,
            "hidden_act": "silu", "torch_dtype": "float16", "bos_token_id": 0, "eos_token_id": 1,
        },
    },
]

PREFILL_LEN = 19
GREEDY_PROMPT_LEN = 7
GREEDY_NEW = 20
MARGIN = 1e-3          # top-1 minus top-2 logit, relative to max |logit|

# ---------------------------------------------------------------- weights

def head_dim(cfg):
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def make_weights(cfg, seed):
    """Random weights with scales that give peaked, non-degenerate logits."""
    g = torch.Generator().manual_seed(seed)
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim(cfg)
    arch = cfg["model_type"]

    def randn(*shape, std):
        return torch.randn(*shape, generator=g) * std

    def norm_w(n):
        return 1.0 + randn(n, std=0.1)

    w = {"model.embed_tokens.weight": randn(V, H, std=1.0),
         "model.norm.weight": norm_w(H)}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = norm_w(H)
        w[p + "post_attention_layernorm.weight"] = norm_w(H)
        w[p + "self_attn.q_proj.weight"] = randn(nh * D, H, std=2.0 / math.sqrt(H))
        w[p + "self_attn.k_proj.weight"] = randn(nkv * D, H, std=2.0 / math.sqrt(H))
        w[p + "self_attn.v_proj.weight"] = randn(nkv * D, H, std=1.0 / math.sqrt(H))
        w[p + "self_attn.o_proj.weight"] = randn(H, nh * D, std=2.0 / math.sqrt(nh * D))
        w[p + "mlp.gate_proj.weight"] = randn(I, H, std=1.0 / math.sqrt(H))
        w[p + "mlp.up_proj.weight"] = randn(I, H, std=1.0 / math.sqrt(H))
        w[p + "mlp.down_proj.weight"] = randn(H, I, std=3.0 / math.sqrt(I))
        if arch == "qwen2" or cfg.get("attention_bias"):
            w[p + "self_attn.q_proj.bias"] = randn(nh * D, std=0.1)
            w[p + "self_attn.k_proj.bias"] = randn(nkv * D, std=0.1)
            w[p + "self_attn.v_proj.bias"] = randn(nkv * D, std=0.1)
        if arch != "qwen2" and cfg.get("attention_bias"):
            w[p + "self_attn.o_proj.bias"] = randn(H, std=0.1)
        if arch == "qwen3":
            w[p + "self_attn.q_norm.weight"] = norm_w(D)
            w[p + "self_attn.k_norm.weight"] = norm_w(D)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = randn(V, H, std=0.35)
    else:
        # Tied: the embedding is also the output matrix; keep logits moderate.
        w["model.embed_tokens.weight"] *= 0.35
    return w

# ---------------------------------------------------------------- safetensors

ST_DTYPE = {"float32": ("F32", torch.float32), "float16": ("F16", torch.float16),
            "bfloat16": ("BF16", torch.bfloat16)}


def tensor_bytes(t, dtype):
    t = t.to(ST_DTYPE[dtype][1]).contiguous().flatten()
    if dtype == "float32":
        return struct.pack("<%df" % t.numel(), *t.tolist())
    return struct.pack("<%dh" % t.numel(), *t.view(torch.int16).tolist())


def write_safetensors(path, weights, dtype):
    """u64 LE header length, JSON header padded with spaces to a multiple of
    8, then the data region in name order (all tensors share one dtype)."""
    header, blobs, off = {}, [], 0
    for name in sorted(weights):
        b = tensor_bytes(weights[name], dtype)
        header[name] = {"dtype": ST_DTYPE[dtype][0], "shape": list(weights[name].shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def stored_values(weights, dtype):
    """What a reader of the file sees, as float32."""
    return {k: v.to(ST_DTYPE[dtype][1]).to(torch.float32) for k, v in weights.items()}

# ---------------------------------------------------------------- reference

def rope_inv_freq(cfg):
    """_compute_default_rope_parameters, then _compute_llama3_parameters."""
    dim = head_dim(cfg)
    base = cfg["rope_theta"]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    rs = cfg.get("rope_scaling")
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        factor = rs["factor"]
        low_freq_factor = rs["low_freq_factor"]
        high_freq_factor = rs["high_freq_factor"]
        old_context_len = rs["original_max_position_embeddings"]
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
        bands = (int((wavelen < high_freq_wavelen).sum()), int(medium.sum()),
                 int((wavelen > low_freq_wavelen).sum()))
        assert all(b > 0 for b in bands), "llama3 scaling should use all three bands: %r" % (bands,)
    return inv_freq


def rms_norm(x, w, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward(cfg, W, ids, ftype, probe=None):
    """Logits [len(ids), vocab] for one sequence starting at position 0.
    probe(name, h), when given, sees the input h of every linear layer
    (name without ".weight"; "lm_head" for the output matrix)."""
    W = {k: v.to(ftype) for k, v in W.items()}
    eps = cfg["rms_norm_eps"]
    nh, nkv, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim(cfg)
    arch = cfg["model_type"]
    T = len(ids)
    x = W["model.embed_tokens.weight"][torch.tensor(ids)]

    inv_freq = rope_inv_freq(cfg)                              # float32, as HF
    pos = torch.arange(T)
    freqs = (inv_freq[:, None].float() @ pos[None, :].float()).t()   # [T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(ftype), emb.sin().to(ftype)       # [T, D]
    mask = torch.full((T, T), float("-inf"), dtype=ftype).triu(1)

    def lin(name, h):
        if probe:
            probe(name, h)
        y = h @ W[name + ".weight"].t()
        b = W.get(name + ".bias")
        return y + b if b is not None else y

    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = lin(p + "self_attn.q_proj", h).view(T, nh, D)
        k = lin(p + "self_attn.k_proj", h).view(T, nkv, D)
        v = lin(p + "self_attn.v_proj", h).view(T, nkv, D)
        if arch == "qwen3":
            q = rms_norm(q, W[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, W[p + "self_attn.k_norm.weight"], eps)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)   # [heads, T, D]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = nh // nkv                                       # repeat_kv
        k = k[:, None].expand(nkv, rep, T, D).reshape(nh, T, D)
        v = v[:, None].expand(nkv, rep, T, D).reshape(nh, T, D)
        att = (q @ k.transpose(1, 2)) * (D ** -0.5) + mask
        att = torch.softmax(att, dim=-1)
        o = (att @ v).transpose(0, 1).reshape(T, nh * D)
        x = x + lin(p + "self_attn.o_proj", o)
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        g = lin(p + "mlp.gate_proj", h)
        u = lin(p + "mlp.up_proj", h)
        x = x + lin(p + "mlp.down_proj", torch.nn.functional.silu(g) * u)
    x = rms_norm(x, W["model.norm.weight"], eps)
    if probe:
        probe("lm_head", x)
    head = W["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else W["lm_head.weight"]
    return x @ head.t()


def greedy(cfg, W, prompt, n_new, stop_ids=()):
    """Greedy continuation by full recomputation (no cache). Fails when a
    step's winner is not clear in float64."""
    ids, out = list(prompt), []
    for _ in range(n_new):
        l32 = forward(cfg, W, ids, torch.float32)[-1]
        l64 = forward(cfg, W, ids, torch.float64)[-1]
        top = torch.topk(l64, 2).values
        if float(top[0] - top[1]) < MARGIN * float(l64.abs().max()):
            return None
        nxt = int(torch.argmax(l64))
        if nxt != int(torch.argmax(l32)):
            return None
        out.append(nxt)
        if nxt in stop_ids:
            break
        ids.append(nxt)
    return out

# ---------------------------------------------------------------- tokenizer

def bytes_to_unicode():
    """GPT-2's byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


ADDED = [(256, "<|endoftext|>", True), (257, "<|im_start|>", True), (258, "<|im_end|>", True),
         (259, "<think>", False), (260, "</think>", False)]

CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
CHAT_SYSTEM = "You are a tiny test model."
CHAT_USER = "Hi"


def write_tokenizer(d):
    """A byte-level BPE tokenizer without merges: token id = byte value,
    plus Qwen-style added tokens."""
    b2u = bytes_to_unicode()
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": c, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": s} for i, c, s in ADDED],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
             "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": {b2u[b]: b for b in range(256)}, "merges": []},
    }
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False, indent=1)
    cfg = {"add_bos_token": False, "bos_token": None, "eos_token": "<|im_end|>",
           "pad_token": "<|endoftext|>", "model_max_length": 512, "chat_template": CHAT_TEMPLATE,
           "tokenizer_class": "Qwen2Tokenizer"}
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)


def encode(text):
    """This tokenizer's encoding with special tokens allowed: added tokens
    matched first, every other byte its own token."""
    ids, i = [], 0
    while i < len(text):
        for tid, content, _ in ADDED:
            if text.startswith(content, i):
                ids.append(tid)
                i += len(content)
                break
        else:
            ids.extend(text[i].encode("utf-8"))
            i += 1
    return ids

# ---------------------------------------------------------------- main

def f32_bytes(t):
    t = t.contiguous().flatten()
    return struct.pack("<%df" % t.numel(), *t.tolist())


def build(spec):
    cfg = spec["config"]
    d = os.path.join(HERE, spec["name"])
    os.makedirs(d, exist_ok=True)
    raw = make_weights(cfg, spec["seed"])
    W = stored_values(raw, spec["dtype"])
    g = torch.Generator().manual_seed(100 + spec["seed"])
    V = cfg["vocab_size"]
    usable = 256 if spec.get("tokenizer") else V   # keep prompts to byte tokens

    prefill = torch.randint(0, usable, (PREFILL_LEN,), generator=g).tolist()
    logits = forward(cfg, W, prefill, torch.float32)
    logits64 = forward(cfg, W, prefill, torch.float64)
    diff64 = float((logits.double() - logits64).abs().max())

    for attempt in range(50):
        prompt = torch.randint(0, usable, (GREEDY_PROMPT_LEN,), generator=g).tolist()
        cont = greedy(cfg, W, prompt, GREEDY_NEW)
        if cont is not None:
            break
    else:
        sys.exit("%s: no prompt with clear greedy steps" % spec["name"])

    golden = {
        "prefill_ids": prefill,
        "n_vocab": V,
        "max_abs_logit": float(logits.abs().max()),
        "f32_vs_f64_max_abs_diff": diff64,
        "greedy_prompt": prompt,
        "greedy_continuation": cont,
    }
    if spec.get("tokenizer"):
        write_tokenizer(d)
        text = ("<|im_start|>system\n" + CHAT_SYSTEM + "<|im_end|>\n<|im_start|>user\n" + CHAT_USER +
                "<|im_end|>\n<|im_start|>assistant\n")
        chat_ids = encode(text)
        chat_cont = greedy(cfg, W, chat_ids, 12, stop_ids=(256, 258))
        if chat_cont is None:
            sys.exit("%s: chat prompt has an unclear greedy step" % spec["name"])
        golden.update({"chat_system": CHAT_SYSTEM, "chat_user": CHAT_USER,
                       "chat_prompt_ids": chat_ids, "chat_continuation": chat_cont})

    write_safetensors(os.path.join(d, "model.safetensors"), raw, spec["dtype"])
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
                   "do_sample": False}, f, indent=2)
    with open(os.path.join(d, "prefill_logits.f32"), "wb") as f:
        f.write(f32_bytes(logits))
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
    print("%-18s prefill %d x %d, max|logit| %.3f, f32 vs f64 %.2e, greedy from %d tokens: %s"
          % (spec["name"], len(prefill), V, golden["max_abs_logit"], diff64, len(prompt), cont))


def main():
    torch.set_num_threads(1)
    for spec in MODELS:
        build(spec)


if __name__ == "__main__":
    main()
