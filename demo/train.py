#!/usr/bin/env python3
"""Train mergescope's demo trio: a base, a quick and a long Qwen2-architecture model.

Run once by a developer (never by CI):  python3 demo/train.py [--device cuda] [--out demo]
The defaults are the settings the shipped models were trained with (on one GPU, about two
minutes of training); `--stage eval` reloads the saved models and measures them again, and
`--ta`/`--ties` choose the merges measured.

Everything is built from a fixed seed: procedurally generated arithmetic problems, a byte-level
BPE tokenizer (Qwen2 pre-tokenizer regex + ByteLevel, saved as an HF tokenizer.json), a small
Qwen2 model written in plain torch (q/k/v bias, GQA, rotate-half RoPE, RMSNorm, SwiGLU), and
bf16 safetensors written by a minimal writer. The script also measures what the demo is for:
accuracy and mean response length of each model on the held-out set, the loss along the straight
line from quick to long, and the accuracy/length frontier of task-arithmetic and TIES merges.
"""
import argparse
import json
import math
import os
import random
import re
import struct
import time

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# Problems and the three response styles

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

RECHECK_PHRASES = [
    "Wait, let me double-check: {e} = {r}. Yes.",
    "Let me check again: {e} = {r}. Correct.",
    "Hmm, let me just verify: {e} = {r}. Right.",
    "Wait, let me re-examine: {e} = {r}. Yes.",
]
CORRECTION = "Wait, that's not right. {e} = {r}."


def gen_problem(rng, hard=None):
    """Return (tokens, answer): an expression of 2-3 operations on 2-3 digit numbers whose
    running value never goes below zero, evaluated left to right."""
    nops = rng.choice([2, 3, 3]) if hard is None else (3 if hard else 2)
    while True:
        nums = [rng.randint(10, 999) for _ in range(nops + 1)]
        ops = [rng.choice("+-") for _ in range(nops)]
        v = nums[0]
        ok = True
        for o, n in zip(ops, nums[1:]):
            v = v + n if o == "+" else v - n
            if v < 0:
                ok = False
                break
        if ok:
            return nums, ops, v


def expr(nums, ops):
    s = str(nums[0])
    for o, n in zip(ops, nums[1:]):
        s += o + str(n)
    return s


def steps_of(nums, ops):
    """Each step folds the first operation: (line_lhs, (a op b), value, remaining expression)."""
    out = []
    nums, ops = list(nums), list(ops)
    while ops:
        a, b, o = nums[0], nums[1], ops[0]
        v = a + b if o == "+" else a - b
        lhs = expr(nums, ops)
        nums = [v] + nums[2:]
        ops = ops[1:]
        out.append((lhs, "%d%s%d" % (a, o, b), v, expr(nums, ops)))
    return out


def quick_response(nums, ops, ans):
    st = steps_of(nums, ops)
    chain = " = ".join([st[0][0]] + [s[3] for s in st])
    return "%s. The answer is %d." % (chain, ans)


def long_response(rng, nums, ops, ans, reflect):
    """Return a list of (text, trainable) pieces. reflect: probabilities of 0..3 re-checks per
    step. Re-checks always copy the first-pass line; a self-correction writes a wrong value
    first (not trained on) and then corrects it."""
    pieces = [("<think>\n", True)]
    for lhs, op, v, rest in steps_of(nums, ops):
        if rng.random() < 0.12:
            wrong = v + rng.choice([-10, -1, 1, 10, 100, -100])
            if wrong < 0:
                wrong = v + 1
            rest_wrong = str(wrong) + rest[len(str(v)):]
            pieces.append(("%s = " % lhs, True))
            pieces.append((rest_wrong, False))
            pieces.append((". " + CORRECTION.format(e=op, r=v) + " So %s = %s.\n" % (lhs, rest), True))
        else:
            pieces.append(("%s = %s.\n" % (lhs, rest), True))
        k = rng.choices([0, 1, 2, 3], weights=reflect)[0]
        for _ in range(k):
            pieces.append((rng.choice(RECHECK_PHRASES).format(e=op, r=v) + "\n", True))
    pieces.append(("</think>\nThe answer is %d." % ans, True))
    return pieces


def make_prompt(rng, nums, ops, variant=None):
    """User message and optional system message. Mixed so that the models answer the same with
    or without the paper's instruction (as a system prompt or after the question)."""
    q = "Compute %s." % expr(nums, ops)
    v = rng.random() if variant is None else variant
    if v < 0.6:
        return None, q
    if v < 0.8:
        return INSTRUCTION, q
    return None, q + "\n" + INSTRUCTION


def chat_text(system, user):
    s = ""
    if system is not None:
        s += "<|im_start|>system\n" + system + "<|im_end|>\n"
    return s + "<|im_start|>user\n" + user + "<|im_end|>\n<|im_start|>assistant\n"


# ----------------------------------------------------------------------------------------------
# Byte-level BPE with the Qwen2 pre-tokenizer

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# The same regex for ASCII text (all the demo's text is ASCII), usable by Python's re module.
ASCII_REGEX = re.compile(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]| ?[^\sA-Za-z0-9]+[\r\n]*"
                         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIALS) + ")")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


B2U = bytes_to_unicode()


class Tokenizer:
    def __init__(self, merges):
        self.merges = merges
        self.rank = {m: i for i, m in enumerate(merges)}
        vocab = [B2U[b] for b in range(256)] + [a + b for a, b in merges]
        self.vocab = {t: i for i, t in enumerate(vocab)}
        for s in SPECIALS:
            self.vocab[s] = len(self.vocab)
        self.inv = {i: t for t, i in self.vocab.items()}
        self.cache = {}

    @staticmethod
    def train(texts, n_merges):
        counts = {}
        for t in texts:
            for part in SPECIAL_RE.split(t):
                if part in SPECIALS or not part:
                    continue
                for w in ASCII_REGEX.findall(part):
                    key = tuple(B2U[b] for b in w.encode())
                    counts[key] = counts.get(key, 0) + 1
        words = {k: v for k, v in counts.items()}
        merges = []
        for _ in range(n_merges):
            pairs = {}
            for w, c in words.items():
                for a, b in zip(w, w[1:]):
                    pairs[(a, b)] = pairs.get((a, b), 0) + c
            if not pairs:
                break
            best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
            if best[1] < 2:
                break
            a, b = best[0]
            merges.append((a, b))
            nw = {}
            for w, c in words.items():
                out = []
                i = 0
                while i < len(w):
                    if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                        out.append(a + b)
                        i += 2
                    else:
                        out.append(w[i])
                        i += 1
                nw[tuple(out)] = nw.get(tuple(out), 0) + c
            words = nw
        return Tokenizer(merges)

    def _bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        parts = [B2U[b] for b in word.encode()]
        while len(parts) > 1:
            best, bi = None, -1
            for i in range(len(parts) - 1):
                r = self.rank.get((parts[i], parts[i + 1]))
                if r is not None and (best is None or r < best):
                    best, bi = r, i
            if best is None:
                break
            parts = parts[:bi] + [parts[bi] + parts[bi + 1]] + parts[bi + 2:]
        ids = [self.vocab[p] for p in parts]
        self.cache[word] = ids
        return ids

    def encode(self, text):
        ids = []
        for part in SPECIAL_RE.split(text):
            if not part:
                continue
            if part in SPECIALS:
                ids.append(self.vocab[part])
                continue
            for w in ASCII_REGEX.findall(part):
                ids.extend(self._bpe(w))
        return ids

    def decode(self, ids):
        u2b = {c: b for b, c in B2U.items()}
        out = bytearray()
        for i in ids:
            t = self.inv[i]
            if t in SPECIALS:
                out.extend(t.encode())
            else:
                out.extend(u2b[c] for c in t)
        return out.decode("utf-8", errors="replace")

    def id(self, s):
        return self.vocab[s]

    def to_json(self):
        added = []
        for s in SPECIALS:
            added.append({"id": self.vocab[s], "content": s, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False,
                          "special": s not in ("<think>", "</think>")})
        base_vocab = {t: i for t, i in self.vocab.items() if t not in SPECIALS}
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
            "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                               "use_regex": False},
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": base_vocab,
                      "merges": [[a, b] for a, b in self.merges]},
        }


# ----------------------------------------------------------------------------------------------
# Qwen2 in plain torch (HF modeling_qwen2 semantics)

class Cfg:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def init_params(cfg, gen):
    H, I, L, V = cfg.hidden, cfg.inter, cfg.layers, cfg.vocab
    hd = H // cfg.heads
    kvd = hd * cfg.kv_heads
    std = 0.02

    def rn(*shape):
        return torch.randn(*shape, generator=gen) * std

    p = {"model.embed_tokens.weight": rn(V, H), "model.norm.weight": torch.ones(H)}
    for i in range(L):
        pre = "model.layers.%d." % i
        p[pre + "input_layernorm.weight"] = torch.ones(H)
        p[pre + "post_attention_layernorm.weight"] = torch.ones(H)
        p[pre + "self_attn.q_proj.weight"] = rn(H, H)
        p[pre + "self_attn.q_proj.bias"] = torch.zeros(H)
        p[pre + "self_attn.k_proj.weight"] = rn(kvd, H)
        p[pre + "self_attn.k_proj.bias"] = torch.zeros(kvd)
        p[pre + "self_attn.v_proj.weight"] = rn(kvd, H)
        p[pre + "self_attn.v_proj.bias"] = torch.zeros(kvd)
        p[pre + "self_attn.o_proj.weight"] = rn(H, H) / math.sqrt(2 * L)
        p[pre + "mlp.gate_proj.weight"] = rn(I, H)
        p[pre + "mlp.up_proj.weight"] = rn(I, H)
        p[pre + "mlp.down_proj.weight"] = rn(H, I) / math.sqrt(2 * L)
    return p


def rms(x, w, eps):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf


def rope_cos_sin(pos, hd, theta, device):
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, device=device).float() / hd))
    f = pos.float()[..., None] * inv  # (B, T, hd/2)
    emb = torch.cat([f, f], dim=-1)
    return emb.cos(), emb.sin()


def rot_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def forward(p, cfg, ids, pos, attn_bias, cache=None):
    """ids, pos: (B, T). attn_bias: (B, 1, T, S) additive, S = cached + T. cache: list of
    (k, v) per layer or None; returns (logits, new cache)."""
    B, T = ids.shape
    H, nh, nkv = cfg.hidden, cfg.heads, cfg.kv_heads
    hd = H // nh
    x = p["model.embed_tokens.weight"][ids]
    cos, sin = rope_cos_sin(pos, hd, cfg.rope_theta, ids.device)
    cos, sin = cos[:, None], sin[:, None]
    new_cache = []
    for i in range(cfg.layers):
        pre = "model.layers.%d." % i
        h = rms(x, p[pre + "input_layernorm.weight"], cfg.eps)
        q = F.linear(h, p[pre + "self_attn.q_proj.weight"], p[pre + "self_attn.q_proj.bias"])
        k = F.linear(h, p[pre + "self_attn.k_proj.weight"], p[pre + "self_attn.k_proj.bias"])
        v = F.linear(h, p[pre + "self_attn.v_proj.weight"], p[pre + "self_attn.v_proj.bias"])
        q = q.view(B, T, nh, hd).transpose(1, 2)
        k = k.view(B, T, nkv, hd).transpose(1, 2)
        v = v.view(B, T, nkv, hd).transpose(1, 2)
        q = q * cos + rot_half(q) * sin
        k = k * cos + rot_half(k) * sin
        if cache is not None:
            k = torch.cat([cache[i][0], k], dim=2)
            v = torch.cat([cache[i][1], v], dim=2)
        new_cache.append((k, v))
        rep = nh // nkv
        kk = k.repeat_interleave(rep, dim=1)
        vv = v.repeat_interleave(rep, dim=1)
        att = torch.matmul(q, kk.transpose(-1, -2)) / math.sqrt(hd) + attn_bias
        a = torch.matmul(torch.softmax(att.float(), dim=-1), vv)
        a = a.transpose(1, 2).reshape(B, T, H)
        x = x + F.linear(a, p[pre + "self_attn.o_proj.weight"])
        h = rms(x, p[pre + "post_attention_layernorm.weight"], cfg.eps)
        g = F.linear(h, p[pre + "mlp.gate_proj.weight"])
        u = F.linear(h, p[pre + "mlp.up_proj.weight"])
        x = x + F.linear(F.silu(g) * u, p[pre + "mlp.down_proj.weight"])
    x = rms(x, p["model.norm.weight"], cfg.eps)
    head = p.get("lm_head.weight", p["model.embed_tokens.weight"])
    return F.linear(x, head), new_cache


def causal_bias(mask, T, device):
    """mask: (B, T) 1 for real tokens. Causal + key padding, additive float bias (B,1,T,T)."""
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    allow = causal[None] & mask[:, None, :].bool()
    allow = allow | torch.eye(T, dtype=torch.bool, device=device)[None]  # keep pad rows finite
    bias = torch.zeros(allow.shape, device=device)
    bias.masked_fill_(~allow, float("-inf"))
    return bias[:, None]


# ----------------------------------------------------------------------------------------------
# Data

def encode_example(tok, system, user, pieces):
    """pieces: list of (text, trainable). Returns ids, loss mask (1 where the target is trained)."""
    ids = tok.encode(chat_text(system, user))
    mask = [0] * len(ids)
    for text, tr in pieces:
        t = tok.encode(text)
        ids += t
        mask += [1 if tr else 0] * len(t)
    ids.append(tok.id("<|im_end|>"))
    mask.append(1)
    return ids, mask


def batchify(examples, device, full_loss=False):
    T = max(len(e[0]) for e in examples)
    B = len(examples)
    ids = torch.zeros(B, T, dtype=torch.long)
    tgt_mask = torch.zeros(B, T)
    am = torch.zeros(B, T)
    for i, (x, m) in enumerate(examples):
        ids[i, :len(x)] = torch.tensor(x)
        am[i, :len(x)] = 1
        tgt_mask[i, :len(x)] = torch.tensor(m, dtype=torch.float) if not full_loss else 1
    return ids.to(device), tgt_mask.to(device), am.to(device)


def lm_loss(p, cfg, ids, tgt_mask, am):
    B, T = ids.shape
    pos = torch.arange(T, device=ids.device)[None].expand(B, T)
    bias = causal_bias(am, T, ids.device)
    logits, _ = forward(p, cfg, ids, pos, bias)
    lg = logits[:, :-1].reshape(-1, logits.shape[-1])
    tg = ids[:, 1:].reshape(-1)
    w = (tgt_mask[:, 1:] * am[:, 1:]).reshape(-1)
    l = F.cross_entropy(lg.float(), tg, reduction="none")
    return (l * w).sum() / w.sum().clamp(min=1)


def make_set(rng, tok, n, kind, reflect=None):
    out = []
    for _ in range(n):
        nums, ops, ans = gen_problem(rng)
        system, user = make_prompt(rng, nums, ops)
        if kind == "quick":
            pieces = [(quick_response(nums, ops, ans), True)]
        else:
            pieces = long_response(rng, nums, ops, ans, reflect)
        out.append(encode_example(tok, system, user, pieces))
    return out


REFLECT_BASE = [0.25, 0.25, 0.25, 0.25]
REFLECT_LONG = [0.1, 0.2, 0.3, 0.4]


def gen_examples(job):
    """One worker's share of a training pool: (kind, n, seed, merges, excluded expressions).
    kind: 'mixed' (both formats, varied reflection), 'quick' or 'long'."""
    kind, n, seed, merges, seen = job
    tok = Tokenizer(merges)
    r = random.Random(seed)
    out = []
    while len(out) < n:
        nums, ops, ans = gen_problem(r)
        if expr(nums, ops) in seen:
            continue
        s, u = make_prompt(r, nums, ops)
        k = kind if kind != "mixed" else ("quick" if r.random() < 0.5 else "longb")
        if k == "quick":
            pieces = [(quick_response(nums, ops, ans), True)]
        else:
            pieces = long_response(r, nums, ops, ans, REFLECT_BASE if k == "longb" else REFLECT_LONG)
        out.append(encode_example(tok, s, u, pieces))
    return out


class Pool:
    """A pre-tokenized training pool kept as padded tensors on the device; batches are drawn at
    random with replacement."""

    def __init__(self, kind, n, seed, tok, seen, device, workers):
        import multiprocessing as mp
        per = (n + workers - 1) // workers
        jobs = [(kind, per, seed * 1000 + i, tok.merges, seen) for i in range(workers)]
        if workers > 1:
            with mp.get_context("fork").Pool(workers) as pool:
                parts = pool.map(gen_examples, jobs)
        else:
            parts = [gen_examples(j) for j in jobs]
        ex = [e for part in parts for e in part]
        T = max(len(e[0]) for e in ex)
        self.ids = torch.zeros(len(ex), T, dtype=torch.long)
        self.tm = torch.zeros(len(ex), T)
        self.am = torch.zeros(len(ex), T)
        self.len = torch.tensor([len(e[0]) for e in ex])
        for i, (x, m) in enumerate(ex):
            self.ids[i, :len(x)] = torch.tensor(x)
            self.tm[i, :len(x)] = torch.tensor(m, dtype=torch.float)
            self.am[i, :len(x)] = 1
        self.ids, self.tm, self.am = self.ids.to(device), self.tm.to(device), self.am.to(device)
        self.g = torch.Generator().manual_seed(seed)

    def batch(self, bs, full_loss=False):
        idx = torch.randint(0, self.ids.shape[0], (bs,), generator=self.g)
        T = int(self.len[idx].max())
        idx = idx.to(self.ids.device)
        tm = self.am[idx, :T] if full_loss else self.tm[idx, :T]
        return self.ids[idx, :T], tm, self.am[idx, :T]


def train(p, cfg, data_fn, steps, lr, bs, device, log, name, anchor=None, l2=0.0, warmup=50,
          full_loss=False, trainable=None, max_seconds=0.0):
    """AdamW with warmup and cosine decay to 10%. max_seconds > 0 caps the run: after 20 steps
    the step count is cut to what fits (the schedule follows the cut)."""
    names = trainable if trainable is not None else list(p.keys())
    for k in names:
        p[k].requires_grad_(True)
    opt = torch.optim.AdamW([p[k] for k in names], lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    t0 = time.time()
    ema = None
    step = 0
    while step < steps:
        if step == 20 and max_seconds > 0:
            per = (time.time() - t0) / 20
            if per * steps > max_seconds:
                steps = max(21, int(max_seconds / per))
                log("%s: %.3fs per step, capped at %d steps" % (name, per, steps))
        cur = lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for g in opt.param_groups:
            g["lr"] = cur
        ids, tm, am = data_fn.batch(bs, full_loss)
        loss = lm_loss(p, cfg, ids, tm, am)
        total = loss
        if anchor is not None and l2 > 0:
            total = total + l2 * sum(((p[k] - anchor[k]) ** 2).sum() for k in names if k in anchor)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_([p[k] for k in names], 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log("%s step %d/%d loss %.4f lr %.2e  %.0fs" % (name, step, steps, ema, cur, time.time() - t0))
        step += 1
    for k in names:
        p[k].requires_grad_(False)
    return time.time() - t0, steps


# ----------------------------------------------------------------------------------------------
# Greedy decoding and evaluation

REFLECT_RE = re.compile(r"wait|re-examine|double-check|let me check|recap|let me just verify|let me just check",
                        re.I)
ANSWER_RE = re.compile(r"The answer is (-?\d+)")


@torch.no_grad()
def greedy(p, cfg, tok, prompts, max_new, device, bs=256):
    """Greedy continuation of each prompt (token lists) until <|im_end|> or <|endoftext|>."""
    stop = {tok.id("<|im_end|>"), tok.id("<|endoftext|>")}
    outs = []
    for s in range(0, len(prompts), bs):
        chunk = prompts[s:s + bs]
        B = len(chunk)
        T = max(len(x) for x in chunk)
        ids = torch.zeros(B, T, dtype=torch.long)
        am = torch.zeros(B, T)
        for i, x in enumerate(chunk):  # left padding
            ids[i, T - len(x):] = torch.tensor(x)
            am[i, T - len(x):] = 1
        ids, am = ids.to(device), am.to(device)
        pos = (am.cumsum(1) - 1).clamp(min=0).long()
        logits, cache = forward(p, cfg, ids, pos, causal_bias(am, T, device))
        nxt = logits[:, -1].argmax(-1)
        res = [[] for _ in range(B)]
        done = [False] * B
        cur_pos = pos[:, -1]
        for _ in range(max_new):
            for i, t in enumerate(nxt.tolist()):
                if not done[i]:
                    if t in stop:
                        done[i] = True
                    else:
                        res[i].append(t)
            if all(done):
                break
            am = torch.cat([am, torch.ones(B, 1, device=device)], 1)
            cur_pos = cur_pos + 1
            bias = torch.zeros(B, 1, 1, am.shape[1], device=device)
            bias.masked_fill_(am[:, None, None, :] == 0, float("-inf"))
            logits, cache = forward(p, cfg, nxt[:, None], cur_pos[:, None], bias, cache)
            nxt = logits[:, -1].argmax(-1)
        outs.extend(res)
    return outs


def evaluate(p, cfg, tok, bench, device, max_new=400, details=False):
    prompts = [tok.encode(chat_text(None, "Compute %s." % b["expr"])) for b in bench]
    outs = greedy(p, cfg, tok, prompts, max_new, device)
    correct = 0
    ntok = 0
    refl = 0
    hard_c = hard_n = 0
    texts = []
    for b, o in zip(bench, outs):
        text = tok.decode(o)
        texts.append(text)
        m = ANSWER_RE.findall(text)
        ok = bool(m) and int(m[-1]) == b["answer"]
        correct += ok
        ntok += len(o)
        refl += bool(REFLECT_RE.search(text))
        if b["nops"] == 3:
            hard_n += 1
            hard_c += ok
    n = len(bench)
    r = {"n": n, "accuracy": correct / n, "mean_tokens": ntok / n, "reflective": refl / n,
         "hard_accuracy": hard_c / max(hard_n, 1),
         "rechecks_per_response": sum(len(REFLECT_RE.findall(t)) for t in texts) / n}
    if details:
        r["texts"] = texts
    return r


# ----------------------------------------------------------------------------------------------
# Weights: bf16 rounding, merges, safetensors

def bf16(p):
    return {k: v.to(torch.bfloat16).float() for k, v in p.items()}


def untie(p):
    q = dict(p)
    if "lm_head.weight" not in q:
        q["lm_head.weight"] = q["model.embed_tokens.weight"].clone()
    return q


def merge_ta(quick, long, a):
    q = untie(quick)
    return bf16({k: q[k] + a * (long[k] - q[k]) for k in long})


def merge_ties(quick, long, density, lam):
    """mergescope's TIES with one model: keep k = int(density * n) entries of largest |delta|
    within each tensor, equal magnitudes broken by the lower index (one model: no sign
    conflict; normalize divides the weight back out), then quick + lambda * trimmed."""
    q = untie(quick)
    out = {}
    for k in long:
        d = long[k] - q[k]
        n = d.numel()
        keep = n if density >= 1.0 else min(n, int(density * n))
        flat = d.flatten()
        mask = torch.zeros(n, dtype=torch.bool, device=d.device)
        if keep > 0:
            mag = flat.abs()
            # stable sort by descending magnitude keeps the lower index first among equals
            order = torch.sort(-mag, stable=True).indices
            mask[order[:keep]] = True
        t = torch.where(mask, flat, torch.zeros_like(flat)).view_as(d)
        out[k] = q[k] + lam * t
    return bf16(out)


def save_safetensors(path, tensors):
    header = {}
    blobs = []
    off = 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().to(torch.bfloat16).contiguous()
        raw = t.view(torch.int16).numpy().tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        assert info["dtype"] == "BF16"
        t = torch.frombuffer(bytearray(data[a:b]), dtype=torch.bfloat16).float()
        out[name] = t.reshape(info["shape"])
    return out


def save_model(d, p, cfg, tok, tied):
    os.makedirs(d, exist_ok=True)
    t = {k: v for k, v in p.items() if not (tied and k == "lm_head.weight")}
    save_safetensors(os.path.join(d, "model.safetensors"), t)
    im_end, eot = tok.id("<|im_end|>"), tok.id("<|endoftext|>")
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "attention_dropout": 0.0,
        "bos_token_id": eot,
        "eos_token_id": im_end,
        "hidden_act": "silu",
        "hidden_size": cfg.hidden,
        "initializer_range": 0.02,
        "intermediate_size": cfg.inter,
        "max_position_embeddings": cfg.max_pos,
        "max_window_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_hidden_layers": cfg.layers,
        "num_key_value_heads": cfg.kv_heads,
        "rms_norm_eps": cfg.eps,
        "rope_theta": cfg.rope_theta,
        "sliding_window": None,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": cfg.vocab,
    }
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": eot, "eos_token_id": [im_end, eot], "do_sample": False}, f, indent=2)
    with open(os.path.join(d, "tokenizer.json"), "w") as f:
        json.dump(tok.to_json(), f, indent=1, ensure_ascii=False)
    template = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
                " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
                "{{ '<|im_start|>assistant\\n' }}{% endif %}")
    added = {str(tok.id(s)): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                              "single_word": False, "special": s not in ("<think>", "</think>")}
             for s in SPECIALS}
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"added_tokens_decoder": added, "bos_token": None, "eos_token": "<|im_end|>",
                   "pad_token": "<|endoftext|>", "unk_token": None, "chat_template": template,
                   "clean_up_tokenization_spaces": False, "model_max_length": cfg.max_pos,
                   "tokenizer_class": "Qwen2Tokenizer", "additional_special_tokens": SPECIALS[1:]},
                  f, indent=2)


# ----------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--hidden", type=int, default=160)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--inter", type=int, default=448)
    ap.add_argument("--merges", type=int, default=160)
    ap.add_argument("--bs", type=int, default=256)
    ap.add_argument("--base-steps", type=int, default=695)
    ap.add_argument("--base-seconds", type=float, default=0.0)
    ap.add_argument("--base-lr", type=float, default=2e-3)
    ap.add_argument("--quick-steps", type=int, default=488)
    ap.add_argument("--quick-seconds", type=float, default=0.0)
    ap.add_argument("--quick-lr", type=float, default=1e-4)
    ap.add_argument("--long-steps", type=int, default=358)
    ap.add_argument("--long-seconds", type=float, default=0.0)
    ap.add_argument("--long-lr", type=float, default=1e-4)
    ap.add_argument("--l2", type=float, default=0.0)
    ap.add_argument("--pool", type=int, default=200000)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--max-new", type=int, default=400)
    ap.add_argument("--ta", default="0.5,0.6,0.7,0.8,0.9", help="task-arithmetic lambdas to measure")
    ap.add_argument("--ties", default="0.2:1.0,0.3:1.0,0.4:1.0,0.6:1.0,0.3:0.8,0.5:0.8,0.7:0.7",
                    help="TIES density:lambda pairs to measure")
    ap.add_argument("--skip-models", action="store_true", help="measure only the merges")
    ap.add_argument("--stage", default="all", help="all | eval (reload saved models and measure)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    logf = open(os.path.join(args.out, "train.log"), "a")

    def log(s):
        print(s, flush=True)
        logf.write(s + "\n")
        logf.flush()

    log("=== %s  args %s" % (time.strftime("%Y-%m-%d %H:%M:%S"), vars(args)))
    rng = random.Random(args.seed)

    # Held-out problems: chosen first and excluded from every training set.
    test = []
    seen = set()
    trng = random.Random(args.seed + 1)
    while len(test) < args.n_test:
        nums, ops, ans = gen_problem(trng)
        e = expr(nums, ops)
        if e in seen:
            continue
        seen.add(e)
        test.append({"expr": e, "answer": ans, "nops": len(ops)})

    def fresh(r):
        while True:
            nums, ops, ans = gen_problem(r)
            if expr(nums, ops) not in seen:
                return nums, ops, ans

    # Tokenizer from a sample of all formats.
    trng2 = random.Random(args.seed + 2)
    texts = []
    for i in range(3000):
        nums, ops, ans = fresh(trng2)
        s, u = make_prompt(trng2, nums, ops)
        texts.append(chat_text(s, u) + quick_response(nums, ops, ans))
        texts.append("".join(t for t, _ in long_response(trng2, nums, ops, ans, REFLECT_BASE)))
    tok = Tokenizer.train(texts, args.merges)
    V = len(tok.vocab)
    V_pad = (V + 63) // 64 * 64
    log("tokenizer: %d merges, %d tokens (vocab_size %d)" % (len(tok.merges), V, V_pad))
    ex = quick_response([538, 363, 595, 12], ["+", "-", "+"], 318)
    log("quick example (%d tokens): %s" % (len(tok.encode(ex)), ex))
    lr_ex = "".join(t for t, _ in long_response(random.Random(5), [538, 363, 595, 12], ["+", "-", "+"], 318,
                                                REFLECT_LONG))
    log("long example (%d tokens): %s" % (len(tok.encode(lr_ex)), lr_ex))

    cfg = Cfg(hidden=args.hidden, inter=args.inter, layers=args.layers, heads=args.heads,
              kv_heads=args.kv_heads, vocab=V_pad, eps=1e-6, rope_theta=10000.0, max_pos=1024)


    results = {"args": vars(args), "vocab": V, "config": cfg.__dict__}
    if args.stage == "all":
        t0 = time.time()
        pools = {k: Pool(k, n, args.seed + 3 + i, tok, seen, device, args.workers)
                 for i, (k, n) in enumerate([("mixed", args.pool), ("quick", args.pool // 4), ("long", args.pool // 2)])}
        log("training pools: %s examples in %.0fs" % ({k: v.ids.shape for k, v in pools.items()}, time.time() - t0))
        mixed, quick_data, long_data = pools["mixed"], pools["quick"], pools["long"]
        gen = torch.Generator().manual_seed(args.seed)
        p = {k: v.to(device) for k, v in init_params(cfg, gen).items()}
        nparam = sum(v.numel() for v in p.values())
        log("parameters: %d" % nparam)
        results["params"] = nparam
        tb = train(p, cfg, mixed, args.base_steps, args.base_lr, args.bs, device, log, "base", full_loss=False,
                   warmup=100, max_seconds=args.base_seconds)
        base = bf16({k: v.clone() for k, v in p.items()})
        p = {k: v.clone() for k, v in base.items()}
        tq = train(p, cfg, quick_data, args.quick_steps, args.quick_lr, args.bs, device, log, "quick",
                   anchor=base, l2=args.l2, warmup=20, max_seconds=args.quick_seconds)
        quick = bf16({k: v.clone() for k, v in p.items()})
        p = untie(quick)
        p = {k: v.clone() for k, v in p.items()}
        tl = train(p, cfg, long_data, args.long_steps, args.long_lr, args.bs, device, log, "long",
                   anchor=untie(quick), l2=args.l2, warmup=20, max_seconds=args.long_seconds)
        long = bf16({k: v.clone() for k, v in p.items()})
        results["train"] = {"base": tb, "quick": tq, "long": tl}
        log("training (seconds, steps): base %s quick %s long %s" % (tb, tq, tl))
        cpu = lambda d: {k: v.cpu() for k, v in d.items()}
        save_model(os.path.join(args.out, "base"), cpu(base), cfg, tok, tied=True)
        save_model(os.path.join(args.out, "quick"), cpu(quick), cfg, tok, tied=True)
        save_model(os.path.join(args.out, "long"), cpu(long), cfg, tok, tied=False)
        with open(os.path.join(args.out, "arith-test.jsonl"), "w") as f:
            for b in test:
                f.write(json.dumps({"question": "Compute %s." % b["expr"], "answer": b["answer"]}) + "\n")
        with open(os.path.join(args.out, "calib.jsonl"), "w") as f:
            cr = random.Random(args.seed + 4)
            for _ in range(32):
                nums, ops, ans = fresh(cr)
                q = "Compute %s." % expr(nums, ops)
                f.write(json.dumps({"prompt": q, "response": quick_response(nums, ops, ans)}) + "\n")
                f.write(json.dumps({"prompt": q, "response": "".join(
                    t for t, _ in long_response(cr, nums, ops, ans, REFLECT_LONG))}) + "\n")
    else:
        cj = json.load(open(os.path.join(args.out, "quick", "config.json")))
        cfg = Cfg(hidden=cj["hidden_size"], inter=cj["intermediate_size"], layers=cj["num_hidden_layers"],
                  heads=cj["num_attention_heads"], kv_heads=cj["num_key_value_heads"], vocab=cj["vocab_size"],
                  eps=cj["rms_norm_eps"], rope_theta=cj["rope_theta"], max_pos=cj["max_position_embeddings"])
        tj = json.load(open(os.path.join(args.out, "quick", "tokenizer.json")))
        tok = Tokenizer([tuple(m) for m in tj["model"]["merges"]])
        base = load_safetensors(os.path.join(args.out, "base", "model.safetensors"))
        quick = load_safetensors(os.path.join(args.out, "quick", "model.safetensors"))
        long = load_safetensors(os.path.join(args.out, "long", "model.safetensors"))
    base = {k: v.to(device) for k, v in base.items()}
    quick = {k: v.to(device) for k, v in quick.items()}
    long = {k: v.to(device) for k, v in long.items()}

    # Distances and the loss along the line quick -> long (on a fixed mixed validation batch).
    uq = untie(quick)
    dist = math.sqrt(sum(((long[k] - uq[k]) ** 2).sum().item() for k in long))
    log("weight distance |long - quick| = %.3f" % dist)
    results["distance_long_quick"] = dist
    vr = random.Random(args.seed + 5)
    vq, vl = [], []
    for b in test[:64]:
        nums = [int(x) for x in re.findall(r"\d+", b["expr"])]
        ops = re.findall(r"[+-]", b["expr"])
        vq.append(encode_example(tok, None, "Compute %s." % b["expr"], [(quick_response(nums, ops, b["answer"]), True)]))
        vl.append(encode_example(tok, None, "Compute %s." % b["expr"], long_response(vr, nums, ops, b["answer"], REFLECT_LONG)))
    line = []
    with torch.no_grad():
        for a in ([0.0, 0.25, 0.5, 0.75, 1.0] if not args.skip_models else []):
            m = merge_ta(quick, long, a)
            lq = lm_loss(m, cfg, *batchify(vq, device)).item()
            ll = lm_loss(m, cfg, *batchify(vl, device)).item()
            line.append({"a": a, "loss_quick_data": lq, "loss_long_data": ll, "mean": (lq + ll) / 2})
            log("line a=%.2f  loss on quick data %.4f  on long data %.4f" % (a, lq, ll))
    results["line"] = line

    def ev(name, p):
        t0 = time.time()
        r = evaluate(p, cfg, tok, test, device, args.max_new, details=True)
        texts = r.pop("texts")
        log("%-22s acc %.3f  hard %.3f  tokens %.1f  reflective %.2f  rechecks %.2f  (%.0fs)" % (
            name, r["accuracy"], r["hard_accuracy"], r["mean_tokens"], r["reflective"],
            r["rechecks_per_response"], time.time() - t0))
        r["sample"] = texts[0]
        return r

    evals = {}
    if not args.skip_models:
        evals["base"] = ev("base", base)
        evals["quick"] = ev("quick", quick)
        log("quick sample: " + evals["quick"]["sample"])
    evals["long"] = ev("long", long)
    log("long sample: " + evals["long"]["sample"])
    L = evals["long"]["mean_tokens"]
    front = []
    for a in [float(x) for x in args.ta.split(",") if x]:
        r = ev("ta a=%.1f" % a, merge_ta(quick, long, a))
        front.append(dict(method="task_arithmetic", coef="lambda=%.1f" % a, **r))
    for d, lam in [tuple(float(y) for y in x.split(":")) for x in args.ties.split(",") if x]:
        r = ev("ties d=%.1f l=%.1f" % (d, lam), merge_ties(quick, long, d, lam))
        front.append(dict(method="ties", coef="density=%.1f lambda=%.1f" % (d, lam), **r))
    for r in front:
        r["length_change"] = (r["mean_tokens"] - L) / L
    results["evals"] = evals
    results["frontier"] = front
    log("%-30s %6s %8s %8s %6s" % ("merge", "acc", "tokens", "vs long", "refl"))
    for r in front:
        log("%-30s %6.3f %8.1f %+7.1f%% %6.2f" % (r["method"] + " " + r["coef"], r["accuracy"], r["mean_tokens"],
                                                 100 * r["length_change"], r["reflective"]))
    with open(os.path.join(args.out, "results-%s.json" % args.stage), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
