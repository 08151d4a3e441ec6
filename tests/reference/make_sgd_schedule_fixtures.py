"""Reference trajectories of `torch.optim.SGD` (momentum, weight decay) and of every
optimiser under CoOp's learning-rate schedule over rounds, written to
tests/fixtures/heads/sgd_schedule.json.

The schedule is the one CoOp builds through Dassl (`dassl/optim/lr_scheduler.py`,
`build_lr_scheduler`): `torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=R)`
(or none: a constant rate), wrapped for `W > 0` warm-up epochs in a constant warm-up whose
`step` hands over to the cosine once its own epoch count reaches W (WARMUP_RECOUNT = True, so
the cosine starts at its epoch 0 then). `ConstantWarmup` below is written from that
description; the cosine is torch's own (its recursive form), so the recorded rates are what
CoOp's training loop would set, one `scheduler.step()` per round.

Head: the linear probe of make_head_fixtures.py (logits = W x̂ + b, W [C, d] started at
s · t̂, b = 0; cross-entropy) in float64 with autograd. Per round, S steps, step j on batch
j mod 2; the optimiser is either kept across rounds (`keep`: fedclip's
--keep-optimizer-state) or re-created every round (its state cleared: what a fresh
torch.optim.SGD / Adam per round does). Recorded: the rate of each round, the loss gradient
before every step (for the error model) and the parameters after every round.

Run with the reference venv (torch, numpy):
    /work/refvenv/bin/python tests/reference/make_sgd_schedule_fixtures.py
"""

import json
import math
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "heads" / "sgd_schedule.json"
D, C, B = 8, 3, 6
LOGIT_SCALE = float(np.float32(math.log(10.0)))
STEPS_PER_ROUND = 2


class ConstantWarmup(torch.optim.lr_scheduler.LRScheduler):
    """Rounds below `warmup` at `cons_lr`; then `successor` (stepped only from then on)."""

    def __init__(self, optimizer, successor, warmup, cons_lr):
        self.successor, self.warmup, self.cons_lr = successor, warmup, cons_lr
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch >= self.warmup:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup:
            self.successor.step()
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step()


def scheduler(optimizer, schedule, rounds, warmup, warmup_lr):
    if schedule == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(rounds))
    else:
        main = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return ConstantWarmup(optimizer, main, warmup, warmup_lr) if warmup > 0 else main


def make_optimizer(cfg, params):
    if cfg["kind"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"],
                               weight_decay=cfg["weight_decay"])
    cls = torch.optim.Adam if cfg["kind"] == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"],
               weight_decay=cfg["weight_decay"])


def normalise(x):
    return x / x.norm(dim=-1, keepdim=True)


def schedule_rates(schedule, rounds, warmup, warmup_lr, lr=1.0):
    """The rate torch sets for each round (a throw-away parameter, no training)."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=lr)
    sched = scheduler(opt, schedule, rounds, warmup, warmup_lr)
    rates = []
    for _ in range(rounds):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


def case(cfg, texts, batches, rounds, schedule, warmup, warmup_lr, keep):
    s = math.exp(LOGIT_SCALE)
    w = (s * normalise(torch.tensor(texts, dtype=torch.float64))).requires_grad_(True)
    b = torch.zeros(C, dtype=torch.float64, requires_grad=True)
    init = torch.cat([w.detach().reshape(-1), b.detach()]).tolist()
    opt = make_optimizer(cfg, [w, b])
    sched = scheduler(opt, schedule, rounds, warmup, warmup_lr)
    rates, params, grads = [], [], []
    for _ in range(rounds):
        if not keep:
            opt.state.clear()  # as a new optimiser per round: no momentum buffer, step 0
        rates.append(opt.param_groups[0]["lr"])
        for j in range(STEPS_PER_ROUND):
            x, y = batches[j % 2]
            opt.zero_grad()
            logits = normalise(torch.tensor(x, dtype=torch.float64)) @ w.T + b
            torch.nn.functional.cross_entropy(logits, torch.tensor(y)).backward()
            grads.append(torch.cat([w.grad.reshape(-1), b.grad]).tolist())
            opt.step()
        sched.step()
        params.append(torch.cat([w.detach().reshape(-1), b.detach()]).tolist())
    return dict(optimizer=cfg, rounds=rounds, schedule=schedule, warmup_rounds=warmup,
                warmup_lr=warmup_lr, keep=keep, init=init, rates=rates, params=params,
                grads=grads)


def main():
    rng = np.random.default_rng(20240)
    texts = rng.standard_normal((C, D)).astype(np.float32)
    batches = []
    for _ in range(2):
        x = (rng.standard_normal((B, D)) * 2.0).astype(np.float32)
        batches.append((x, rng.integers(0, C, B).tolist()))
    sgd = dict(kind="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    adamw = dict(kind="adamw", lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
    cases = dict(
        sgd_cosine_warmup_kept=case(sgd, texts, batches, 5, "cosine", 1, 1e-3, True),
        sgd_cosine_fresh=case(sgd, texts, batches, 4, "cosine", 0, 1e-5, False),
        sgd_constant_warmup_fresh=case(sgd, texts, batches, 4, "constant", 2, 5e-3, False),
        adamw_cosine_warmup_fresh=case(adamw, texts, batches, 5, "cosine", 2, 1e-3, False),
    )
    schedules = [
        dict(schedule=sch, rounds=r, warmup_rounds=w, warmup_lr=1e-5,
             rates=schedule_rates(sch, r, w, 1e-5, lr=0.002))
        for sch, r, w in [("cosine", 1, 0), ("cosine", 7, 0), ("cosine", 7, 1), ("cosine", 10, 3),
                          ("constant", 5, 2), ("cosine", 50, 1)]
    ]
    fixture = dict(
        dim=D,
        classes=C,
        logit_scale=LOGIT_SCALE,
        steps_per_round=STEPS_PER_ROUND,
        texts=texts.reshape(-1).tolist(),
        batches=[dict(features=x.reshape(-1).tolist(), labels=y) for x, y in batches],
        cases=cases,
        schedules=schedules,
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
