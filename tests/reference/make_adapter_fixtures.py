"""Reference fixtures for the FedCLIP adapter (src/adapter), made with PyTorch.

Pinned versions (the reference venv, see tests/reference/requirements.txt):
    torch==2.15.0, safetensors==0.8.0, numpy==2.4.6, Python 3.12, CPU only.

How to run (from the repository root):

    /work/refvenv/bin/python tests/reference/make_adapter_fixtures.py

CI does NOT run this script; its outputs under tests/fixtures/adapter/ are committed and
read by tests/adapter.rs. It is deterministic (fixed seeds, one torch thread): two runs give
byte-identical files. No network and no model weights are needed.

The model and the training step mirror FedCLIP's reference (microsoft/PersonalizedFL,
fedclip/nets/models.py and fedclip/methods/fed_at_clip.py), with the CLIP encoders replaced
by given features:

    img_adap = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d), nn.Softmax(dim=1))
    att = img_adap(I); I = att * I; n = I / I.norm(dim=1, keepdim=True)
    t = text[labels]; t = t / t.norm(dim=1, keepdim=True)
    logits = logit_scale.exp() * n @ t.t()
    loss = (CE(logits, arange B) + CE(logits.t(), arange B)) / 2      # "contrastive"
    optimizer = torch.optim.Adam(params, lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    batches with len <= 1 are skipped (no forward, no step)

plus the "class" loss CE(logit_scale.exp() * n @ normalize(text).t(), labels) and
torch.optim.AdamW as alternatives.

Each file tests/fixtures/adapter/<name>.safetensors holds (float32 unless noted):
    w1_init [d,d], b1_init [d], w2_init [d,d], b2_init [d]   initial parameters
    text [C,d]                  raw (un-normalised) class text features
    logit_scale []              the log of the scale (s = exp(logit_scale))
    features_{i} [B_i,d], labels_{i} [B_i] (int64)   the batch of step i
    loss [S]                    loss at step i (NaN where the step is skipped)
    stepped [S] (int64)         1 where the optimiser stepped
    w1_{i}, b1_{i}, w2_{i}, b2_{i}   parameters after step i
    grad_w1_0, grad_b1_0, grad_w2_0, grad_b2_0   gradient of step 0 (before the update)
    test_features [N,d], pred [N] (int64), pred_zero_shot [N] (int64)
        argmax_c of the final adapter's n . t_c, and of the raw features (zero-shot)
metadata: loss, optimizer, lr, beta1, beta2, eps, weight_decay, dim, classes, batch_sizes,
    min_batch, torch version.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "adapter"

D = 37  # awkward width
C = 5
BATCH_SIZES = [33, 2, 1, 33, 20, 33, 7]  # step 2 (B = 1) must be skipped
MIN_BATCH = 2

CASES = [
    # name, loss, optimizer, lr, logit_scale (log), weight_decay
    ("contrastive_adam_ref", "contrastive", "adam", 5e-5, math.log(100.0), 0.2),
    ("contrastive_adam_lr1e-2", "contrastive", "adam", 1e-2, math.log(100.0), 0.2),
    ("contrastive_adamw_lr1e-2", "contrastive", "adamw", 1e-2, math.log(1 / 0.07), 0.2),
    ("class_adam_lr1e-2", "class", "adam", 1e-2, math.log(100.0), 0.2),
    ("class_adamw_lr1e-2", "class", "adamw", 1e-2, math.log(30.0), 0.2),
]


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Writes a safetensors file with a canonical header (sorted metadata and tensor names),
    so that reruns are byte-identical (the library's own writer orders metadata by hash)."""
    dtypes = {torch.float32: "F32", torch.int64: "I64"}
    header: dict = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        data = t.numpy().tobytes()
        header[name] = {
            "dtype": dtypes[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))
    with safe_open(str(path), "pt") as f:  # round-trip check
        assert f.metadata() == metadata and sorted(f.keys()) == sorted(tensors)


def make_adapter(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d), nn.Softmax(dim=1))


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def loss_fn(kind, adap, feats, labels, text, logit_scale):
    att = adap(feats)
    img = torch.mul(att, feats)
    img = img / img.norm(dim=1, keepdim=True)
    scale = logit_scale.exp()
    if kind == "contrastive":
        t = normalize(text[labels])
        logits_per_image = scale * img @ t.t()
        logits_per_text = logits_per_image.t()
        gt = torch.arange(len(feats), dtype=torch.long)
        ce = nn.CrossEntropyLoss()
        return (ce(logits_per_image, gt) + ce(logits_per_text, gt)) / 2
    logits = scale * img @ normalize(text).t()
    return nn.CrossEntropyLoss()(logits, labels)


def make_case(seed, name, kind, opt_name, lr, logit_scale_log, wd):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    adap = make_adapter(D)
    out = {}
    for key, p in zip(["w1", "b1", "w2", "b2"], adap.parameters()):
        out[f"{key}_init"] = p.detach().clone()
    text = torch.randn(C, D, generator=g)
    out["text"] = text
    logit_scale = torch.tensor(logit_scale_log, dtype=torch.float32)
    out["logit_scale"] = logit_scale.clone()

    batches = []
    for b in BATCH_SIZES:
        labels = torch.randint(0, C, (b,), generator=g)
        # Features weakly correlated with their class text, so that no loss saturates.
        feats = 0.3 * text[labels] + torch.randn(b, D, generator=g)
        batches.append((feats, labels))

    if opt_name == "adam":
        opt = torch.optim.Adam(
            params=[{"params": adap.parameters()}], lr=lr, betas=(0.9, 0.98), eps=1e-6,
            weight_decay=wd,
        )
    else:
        opt = torch.optim.AdamW(
            params=[{"params": adap.parameters()}], lr=lr, betas=(0.9, 0.98), eps=1e-6,
            weight_decay=wd,
        )

    losses, stepped = [], []
    for i, (feats, labels) in enumerate(batches):
        out[f"features_{i}"] = feats
        out[f"labels_{i}"] = labels
        if len(labels) >= MIN_BATCH:
            loss = loss_fn(kind, adap, feats, labels, text, logit_scale)
            opt.zero_grad()
            loss.backward()
            if i == 0:
                for key, p in zip(["w1", "b1", "w2", "b2"], adap.parameters()):
                    out[f"grad_{key}_0"] = p.grad.detach().clone()
            opt.step()
            losses.append(loss.item())
            stepped.append(1)
        else:
            losses.append(float("nan"))
            stepped.append(0)
        for key, p in zip(["w1", "b1", "w2", "b2"], adap.parameters()):
            out[f"{key}_{i}"] = p.detach().clone()
    out["loss"] = torch.tensor(losses, dtype=torch.float32)
    out["stepped"] = torch.tensor(stepped, dtype=torch.int64)

    test_labels = torch.randint(0, C, (40,), generator=g)
    test = 0.3 * text[test_labels] + torch.randn(40, D, generator=g)
    out["test_features"] = test
    with torch.no_grad():
        adapted = torch.mul(adap(test), test)
        out["pred"] = (adapted @ normalize(text).t()).argmax(dim=1)
        out["pred_zero_shot"] = (test @ normalize(text).t()).argmax(dim=1)

    meta = {
        "loss": kind,
        "optimizer": opt_name,
        "lr": repr(lr),
        "beta1": "0.9",
        "beta2": "0.98",
        "eps": "1e-06",
        "weight_decay": repr(wd),
        "dim": str(D),
        "classes": str(C),
        "batch_sizes": json.dumps(BATCH_SIZES),
        "min_batch": str(MIN_BATCH),
        "torch": torch.__version__,
    }
    write_safetensors(out, OUT / f"{name}.safetensors", meta)
    print(f"{name}: losses {[round(x, 6) for x in losses]}")


def main():
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    for seed, case in enumerate(CASES):
        make_case(1000 + seed, *case)


if __name__ == "__main__":
    main()
