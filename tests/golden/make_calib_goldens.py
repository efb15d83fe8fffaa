#!/usr/bin/env python3
"""Writes the calibration goldens (tests/golden/calib/): what aim and sens
measure, computed with PyTorch from the reference forward pass of
make_goldens.py, for the C calibration passes to match.

Run once by a developer with Debian's python3-torch; CI never runs it.

Models: the base is the qwen2-bf16-tied golden model (A); model-b and
model-c are A with small seeded perturbations of every weight (BF16).
Data: two token sequences with a prompt part and a response part.

expected.json holds
  sequences     [{"ids": [...], "resp_from": k}]
  mean_abs      {"<layer>.<input>": [...]}: A's mean |input| of each linear
                layer over all tokens (input: attn_in, attn_out, mlp_in,
                mlp_act; "head.head_in" for lm_head)
  importance    the same, min-max normalised per vector
  importance_max  the same, divided by the vector's largest value
  sensitivity   {"model-b": [s_0, s_1], ...}: sum over the sequences of
                sum |w * dL/dw| over each decoder layer's weights, L the
                mean cross-entropy of the response tokens (autograd)
  loss          mean over the sequences of L, per model
  alignment     per model: mean over response tokens of the mean centred
                cosine similarity of its logits with each other
                participant's (A and the other model)
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens as mg  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "calib")
PROBE_OF = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "o_proj": "attn_out",
            "gate_proj": "mlp_in", "up_proj": "mlp_in", "down_proj": "mlp_act"}


def spec_named(name):
    for s in mg.MODELS:
        if s["name"] == name:
            return s
    sys.exit("no golden model " + name)


def perturbed(raw, seed, std):
    g = torch.Generator().manual_seed(seed)
    return {k: v + torch.randn(v.shape, generator=g) * std * v.abs().mean() for k, v in raw.items()}


def importance(cfg, W, seqs):
    sums, rows = {}, {}

    def probe(name, h):
        if name == "lm_head":
            key = "head.head_in"
        else:
            parts = name.split(".")
            key = parts[2] + "." + PROBE_OF[parts[-1]]
        if key in sums and name.endswith(("k_proj", "v_proj", "up_proj")):
            return  # the same input as q_proj / gate_proj: count it once
        a = h.detach().double().abs().sum(0)
        sums[key] = sums.get(key, 0) + a
        rows[key] = rows.get(key, 0) + h.shape[0]

    for s in seqs:
        mg.forward(cfg, W, s["ids"], torch.float32, probe=probe)
    raw, minmax, bymax = {}, {}, {}
    for key, tot in sums.items():
        m = tot / rows[key]
        lo, hi = m.min(), m.max()
        raw[key] = m.tolist()
        minmax[key] = ((m - lo) / (hi - lo)).tolist() if hi > lo else [0.0] * len(m)
        bymax[key] = (m / hi).tolist() if hi > 0 else [0.0] * len(m)
    return raw, minmax, bymax


def response_loss(cfg, W, s):
    ids, k = s["ids"], s["resp_from"]
    logits = mg.forward(cfg, W, ids, torch.float32)
    target = torch.tensor(ids[k:])
    return torch.nn.functional.cross_entropy(logits[k - 1:len(ids) - 1], target), logits


def sensitivity(cfg, W, seqs):
    L = cfg["num_hidden_layers"]
    sens = [0.0] * L
    loss_sum = 0.0
    for s in seqs:
        leaves = {k: v.clone().requires_grad_(True) for k, v in W.items()}
        loss, _ = response_loss(cfg, leaves, s)
        loss.backward()
        loss_sum += float(loss)
        for name, w in leaves.items():
            if name.startswith("model.layers."):
                l = int(name.split(".")[2])
                sens[l] += float((w.detach().double() * w.grad.double()).abs().sum())
    return sens, loss_sum / len(seqs)


def centred_cos(a, b):
    a = a.double() - a.double().mean()
    b = b.double() - b.double().mean()
    return float((a @ b) / torch.sqrt((a @ a) * (b @ b)))


def main():
    torch.set_num_threads(1)
    spec = spec_named("qwen2-bf16-tied")
    cfg = spec["config"]
    raw_a = mg.make_weights(cfg, spec["seed"])
    W = {"A": mg.stored_values(raw_a, spec["dtype"])}
    os.makedirs(OUT, exist_ok=True)
    for name, seed in (("model-b", 501), ("model-c", 502)):
        raw = perturbed(raw_a, seed, 0.05)
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        mg.write_safetensors(os.path.join(d, "model.safetensors"), raw, spec["dtype"])
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        W[name] = mg.stored_values(raw, spec["dtype"])

    g = torch.Generator().manual_seed(77)
    seqs = [{"ids": torch.randint(0, 256, (20,), generator=g).tolist(), "resp_from": 8},
            {"ids": torch.randint(0, 256, (13,), generator=g).tolist(), "resp_from": 5}]

    raw, minmax, bymax = importance(cfg, W["A"], seqs)
    expected = {"sequences": seqs, "mean_abs": raw, "importance": minmax, "importance_max": bymax,
                "sensitivity": {}, "loss": {}, "alignment": {}}
    for name in ("model-b", "model-c"):
        sens, loss = sensitivity(cfg, W[name], seqs)
        expected["sensitivity"][name] = sens
        expected["loss"][name] = loss

    parts = ["A", "model-b", "model-c"]
    align = {"model-b": 0.0, "model-c": 0.0}
    n_resp = 0
    with torch.no_grad():
        for s in seqs:
            k, n = s["resp_from"], len(s["ids"])
            z = {p: mg.forward(cfg, W[p], s["ids"], torch.float32)[k - 1:n - 1] for p in parts}
            n_resp += n - k
            for m in align:
                for r in range(n - k):
                    align[m] += sum(centred_cos(z[m][r], z[o][r]) for o in parts if o != m) / 2
    expected["alignment"] = {m: v / n_resp for m, v in align.items()}

    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print("calib goldens: %d importance vectors; sensitivity %s; loss %s; alignment %s"
          % (len(expected["importance"]), expected["sensitivity"], expected["loss"], expected["alignment"]))


if __name__ == "__main__":
    main()
