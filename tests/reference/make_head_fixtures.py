"""Reference steps of the method families in `src/heads/` (linear probe, CLIP-Adapter,
Tip-Adapter-F's cache), in PyTorch float64 with autograd and torch.optim, written to
tests/fixtures/heads/heads.json.

Each case fixes small float32 inputs (drawn here and stored in the fixture, so fedclip reads
the very same values), then records the loss and gradient at the start and the loss and
parameters after each of three optimiser steps on one batch:

- linear probe: logits = W x̂ + b on the L2-normalised feature x̂, W [C, d], b [C], started
  from W = s · t̂_c (normalised class text features times s = exp(logit_scale)), b = 0;
  softmax cross-entropy; Adam.
- CLIP-Adapter (Gao et al. 2021, the paper's code): A(x) = ReLU(W2 ReLU(W1 x)), W1 [d/4, d],
  W2 [d, d/4], no biases; f = α A(x) + (1 − α) x; logits = s · (f / ‖f‖) t̂ᵀ; CE; Adam.
- Tip-Adapter-F (Zhang et al. 2022): keys K = normalised training features (one padded,
  all-zero entry: a client with fewer samples than the cache holds), values V = one-hot
  labels; logits = s x̂ t̂ᵀ + α exp(−β (1 − x̂ Kᵀ)) V; only the keys are trained; AdamW.
  Also the training-free cache's logits on the batch.

Run with the reference venv (torch, numpy):
    /work/refvenv/bin/python tests/reference/make_head_fixtures.py
"""

import json
import math
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "heads" / "heads.json"
D, C, B = 8, 3, 5
# s = 10 rather than CLIP's 100, so that the softmax is not saturated on these random inputs
# and the gradients depend on all of it.
LOGIT_SCALE = float(np.float32(math.log(10.0)))
STEPS = 3
ADAM = dict(kind="adam", lr=1e-2, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.2)
ADAMW = dict(kind="adamw", lr=1e-2, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.2)


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def t64(a):
    return torch.tensor(np.asarray(a, dtype=np.float64))


def optimizer(cfg, params):
    cls = torch.optim.Adam if cfg["kind"] == "adam" else torch.optim.AdamW
    return cls(
        params,
        lr=cfg["lr"],
        betas=(cfg["beta1"], cfg["beta2"]),
        eps=cfg["eps"],
        weight_decay=cfg["weight_decay"],
    )


def normalise(x):
    return x / x.norm(dim=-1, keepdim=True)


def run(loss_fn, trained, cfg):
    """Loss and gradient at the start, then the loss before and parameters after each step."""
    opt = optimizer(cfg, trained)
    loss = loss_fn()
    grads = torch.autograd.grad(loss, trained)
    out = dict(
        loss0=loss.item(),
        grad0=torch.cat([g.reshape(-1) for g in grads]).tolist(),
        losses=[],
        params=[],
    )
    for _ in range(STEPS):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        out["losses"].append(loss.item())
        out["params"].append(torch.cat([p.detach().reshape(-1) for p in trained]).tolist())
    return out


def linear_probe(rng, texts, x, y):
    s = math.exp(LOGIT_SCALE)
    w = (s * normalise(t64(texts))).clone().requires_grad_(True)
    b = torch.zeros(C, dtype=torch.float64, requires_grad=True)
    init = torch.cat([w.detach().reshape(-1), b.detach()]).tolist()

    def loss_fn():
        logits = normalise(t64(x)) @ w.T + b
        return torch.nn.functional.cross_entropy(logits, torch.tensor(y))

    return dict(init=init, optimizer=ADAM, **run(loss_fn, [w, b], ADAM))


def clip_adapter(rng, texts, x, y):
    r, ratio = D // 4, 0.2
    w1_0 = f32(rng, r, D, scale=1 / math.sqrt(D))
    w2_0 = f32(rng, D, r, scale=1 / math.sqrt(r))
    w1 = t64(w1_0).requires_grad_(True)
    w2 = t64(w2_0).requires_grad_(True)
    s = math.exp(LOGIT_SCALE)
    t = normalise(t64(texts))

    def loss_fn():
        xi = t64(x)
        a = torch.relu(torch.relu(xi @ w1.T) @ w2.T)
        f = ratio * a + (1 - ratio) * xi
        logits = s * normalise(f) @ t.T
        return torch.nn.functional.cross_entropy(logits, torch.tensor(y))

    init = np.concatenate([w1_0.reshape(-1), w2_0.reshape(-1)]).tolist()
    return dict(init=init, ratio=ratio, optimizer=ADAM, **run(loss_fn, [w1, w2], ADAM))


def tip_adapter_f(rng, texts, x, y):
    alpha, beta, n, capacity = 1.0, 5.5, 5, 6
    train_x = f32(rng, n, D)
    train_y = rng.integers(0, C, n).tolist()
    keys0 = np.zeros((capacity, D))
    keys0[:n] = normalise(t64(train_x)).numpy()
    values = np.zeros((capacity, C))
    values[np.arange(n), train_y] = 1.0
    keys = t64(keys0).requires_grad_(True)
    v = t64(values)
    s = math.exp(LOGIT_SCALE)
    t = normalise(t64(texts))

    def logits_of(k):
        xn = normalise(t64(x))
        cache = torch.exp(-(beta - beta * (xn @ k.T))) @ v
        return s * xn @ t.T + alpha * cache

    def loss_fn():
        return torch.nn.functional.cross_entropy(logits_of(keys), torch.tensor(y))

    free_logits = logits_of(t64(keys0)).reshape(-1).tolist()
    return dict(
        alpha=alpha,
        beta=beta,
        capacity=capacity,
        train_features=train_x.reshape(-1).tolist(),
        train_labels=train_y,
        init=np.concatenate([keys0.reshape(-1), values.reshape(-1)]).tolist(),
        training_free_logits=free_logits,
        optimizer=ADAMW,
        **run(loss_fn, [keys], ADAMW),
    )


def main():
    rng = np.random.default_rng(20221)
    texts = f32(rng, C, D)
    x = f32(rng, B, D, scale=2.0)
    y = rng.integers(0, C, B).tolist()
    cases = dict(
        linear_probe=linear_probe(rng, texts, x, y),
        clip_adapter=clip_adapter(rng, texts, x, y),
        tip_adapter_f=tip_adapter_f(rng, texts, x, y),
    )
    fixture = dict(
        dim=D,
        classes=C,
        logit_scale=LOGIT_SCALE,
        texts=texts.reshape(-1).tolist(),
        features=x.reshape(-1).tolist(),
        labels=y,
        cases=cases,
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
