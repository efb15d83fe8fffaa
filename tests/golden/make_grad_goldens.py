#!/usr/bin/env python3
"""Writes the loss-gradient goldens of the three golden models (tests/golden/<model>/).

Run once by a developer with PyTorch (Debian's python3-torch is enough);
CI never runs it. It needs the model directories make_goldens.py wrote and
reuses that script's reference forward pass (written from transformers'
modeling_qwen2.py / modeling_llama.py / modeling_qwen3.py).

For each model, with the weights read back from its model.safetensors (so
that the gradient is of exactly the stored values, upcast to float32), a
fixed token sequence of SEQ_LEN tokens and LOSS_FROM:

  loss = mean over t in [LOSS_FROM, SEQ_LEN) of cross_entropy(logits[t - 1], ids[t])

and torch autograd's gradient of it with respect to every weight, in
float32. A tied model's embedding gradient is the sum of its two uses.
Files written:

  grads.f32        float32 little-endian: every tensor's gradient, in the
                   order of grads.json's "tensors", each in the weight's layout
  grad_logits.f32  float32 little-endian [SEQ_LEN x vocab_size] logits
  grads_long.f32   (LONG_MODEL only) layer 0's attention gradients for a
                   LONG_LEN-token sequence, indexed by grads.json's "long"
  grads.json       ids, loss_from, loss, and per tensor name, shape, offset
                   and count (in floats) into grads.f32, max |grad|; plus the
                   float64 run's loss and the largest per-tensor difference
                   between the float32 and float64 gradients relative to the
                   tensor's max |grad|, which bounds what an engine computing
                   in float32 can be expected to match
"""

import json
import os
import struct
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_goldens as mg  # noqa: E402  (the reference forward and model specs)

SEQ_LEN = 24
LOSS_FROM = 9
# A longer sequence for one model, past the engine's 64-row attention
# blocks: only the loss and layer 0's attention gradients are kept (layer 0
# is the last the backward pass reaches, so every block's error shows there).
LONG_MODEL = "qwen2-bf16-tied"
LONG_LEN = 150
LONG_FROM = 40
LONG_PREFIX = "model.layers.0.self_attn."

ST_TORCH = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_safetensors(path):
    """name -> float32 tensor, as a reader of the file sees it."""
    with open(path, "rb") as f:
        blob = f.read()
    (hlen,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + hlen])
    data = blob[8 + hlen:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw = bytearray(data[b:e])
        dt = info["dtype"]
        if dt == "F32":
            t = torch.frombuffer(raw, dtype=torch.float32)
        else:
            t = torch.frombuffer(raw, dtype=torch.int16).view(ST_TORCH[dt])
        out[name] = t.to(torch.float32).reshape(info["shape"]).clone()
    return out


def loss_and_grads(cfg, W, ids, ftype, loss_from=LOSS_FROM):
    """Loss and {name: grad} with the forward pass run in `ftype`; the
    leaves are the float32 weights, so gradients arrive in float32 after
    passing through the cast."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in W.items()}
    logits = mg.forward(cfg, leaves, ids, ftype)
    target = torch.tensor(ids[loss_from:])
    loss = torch.nn.functional.cross_entropy(logits[loss_from - 1:len(ids) - 1], target)
    loss.backward()
    return float(loss), logits.detach().to(torch.float32), {k: v.grad for k, v in leaves.items()}


def tensor_table(grads, grads64, keep=lambda name: True):
    """The index entries and float32 bytes of the gradients kept, in name
    order, and the worst float32 vs float64 difference relative to each
    tensor's max |grad|."""
    tensors, blobs, off, worst64 = [], [], 0, 0.0
    for name in sorted(grads):
        if not keep(name):
            continue
        gt = grads[name]
        assert gt is not None, "%s: no gradient" % name
        gmax = float(gt.abs().max())
        assert gmax > 0, "%s: gradient is zero" % name
        rel64 = float((gt.double() - grads64[name].double()).abs().max()) / gmax
        worst64 = max(worst64, rel64)
        tensors.append({"name": name, "shape": list(gt.shape), "offset": off, "count": gt.numel(),
                        "max_abs": gmax})
        blobs.append(mg.f32_bytes(gt))
        off += gt.numel()
    return tensors, b"".join(blobs), off, worst64


def build(spec):
    cfg = spec["config"]
    d = os.path.join(HERE, spec["name"])
    W = read_safetensors(os.path.join(d, "model.safetensors"))
    g = torch.Generator().manual_seed(500 + spec["seed"])
    ids = torch.randint(0, cfg["vocab_size"], (SEQ_LEN,), generator=g).tolist()

    loss, logits, grads = loss_and_grads(cfg, W, ids, torch.float32)
    loss64, _, grads64 = loss_and_grads(cfg, W, ids, torch.float64)
    tensors, blob, off, worst64 = tensor_table(grads, grads64)

    index = {
        "ids": ids,
        "loss_from": LOSS_FROM,
        "loss": loss,
        "loss_f64": loss64,
        "n_vocab": cfg["vocab_size"],
        "grad_f32_vs_f64_max_rel_diff": worst64,
        "tensors": tensors,
    }
    if spec["name"] == LONG_MODEL:
        ids_long = torch.randint(0, cfg["vocab_size"], (LONG_LEN,), generator=g).tolist()
        loss_l, _, grads_l = loss_and_grads(cfg, W, ids_long, torch.float32, LONG_FROM)
        loss_l64, _, grads_l64 = loss_and_grads(cfg, W, ids_long, torch.float64, LONG_FROM)
        t_long, blob_long, _, worst_long = tensor_table(grads_l, grads_l64,
                                                        lambda name: name.startswith(LONG_PREFIX))
        index["long"] = {"ids": ids_long, "loss_from": LONG_FROM, "loss": loss_l, "loss_f64": loss_l64,
                         "grad_f32_vs_f64_max_rel_diff": worst_long, "tensors": t_long}
        with open(os.path.join(d, "grads_long.f32"), "wb") as f:
            f.write(blob_long)
        print("%-18s long: %d tokens, %d tensors, loss %.6f, f32 vs f64 gradient %.2e of max"
              % (spec["name"], LONG_LEN, len(t_long), loss_l, worst_long))
    with open(os.path.join(d, "grads.f32"), "wb") as f:
        f.write(blob)
    with open(os.path.join(d, "grad_logits.f32"), "wb") as f:
        f.write(mg.f32_bytes(logits))
    with open(os.path.join(d, "grads.json"), "w") as f:
        json.dump(index, f, indent=1)
    print("%-18s %d tensors, %d floats, loss %.6f (f64 %.6f), f32 vs f64 gradient %.2e of max"
          % (spec["name"], len(tensors), off, loss, loss64, worst64))


def main():
    torch.set_num_threads(1)
    for spec in mg.MODELS:
        build(spec)


if __name__ == "__main__":
    main()
