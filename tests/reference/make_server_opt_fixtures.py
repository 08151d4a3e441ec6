"""Reference trajectories of the server optimisers (FedAvg, FedAvgM, FedAdam, FedYogi) on
fixed client deltas, in NumPy, written to tests/fixtures/server_opt/trajectories.json.

The rules are Flower's (`flwr.serverapp.strategy` FedAvgM / FedAdam / FedYogi, after Reddi et
al. 2021): Δ = weighted mean − x; FedAvgM m ← μ m − Δ, x ← x − η m; FedAdam and FedYogi
m ← β1 m + (1 − β1) Δ, Adam v ← β2 v + (1 − β2) Δ², Yogi v ← v − (1 − β2) Δ² sign(v − Δ²),
x ← x + η_t m / (√v + τ), with FedAdam's η_t = η √(1 − β2^(t+1)) / (1 − β1^(t+1)) for the
1-based round t and FedYogi's η_t = η. m and v start at zero.

fedclip keeps parameters, m and v in float32 and computes each step in float64; this script
rounds the same way, so the comparison can be tight. Needs only numpy:
    python3 tests/reference/make_server_opt_fixtures.py
"""

import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "server_opt" / "trajectories.json"
P, ROUNDS = 23, 5
TRAIN_SIZES = [3, 5, 8]
# Round 2 samples two of the three clients: the third's row is stale and must be ignored.
SLOTS = [[0, 1, 2], [0, 1, 2], [0, 2], [0, 1, 2], [1, 2]]

CASES = [
    dict(opt="fedavg", lr=1.0, momentum=0.9, beta1=0.9, beta2=0.99, tau=1e-3),
    dict(opt="fedavgm", lr=1.0, momentum=0.9, beta1=0.9, beta2=0.99, tau=1e-3),
    dict(opt="fedavgm", lr=0.7, momentum=0.5, beta1=0.9, beta2=0.99, tau=1e-3),
    dict(opt="fedadam", lr=0.1, momentum=0.9, beta1=0.9, beta2=0.99, tau=1e-3),
    dict(opt="fedadam", lr=0.3, momentum=0.9, beta1=0.5, beta2=0.9, tau=1e-2),
    dict(opt="fedyogi", lr=0.01, momentum=0.9, beta1=0.9, beta2=0.99, tau=1e-3),
    dict(opt="fedyogi", lr=0.05, momentum=0.9, beta1=0.8, beta2=0.95, tau=1e-2),
]


def weighted_mean(rows, slots):
    w = np.array([TRAIN_SIZES[s] for s in slots], dtype=np.float64)
    acc = np.zeros(P, dtype=np.float64)
    for wk, s in zip(w, slots):
        acc += wk / w.sum() * rows[s].astype(np.float64)
    return acc.astype(np.float32)


def trajectory(case, x0, deltas):
    x = x0.copy()
    m = np.zeros(P, dtype=np.float32)
    v = np.zeros(P, dtype=np.float32)
    rows = np.stack([x0] * len(TRAIN_SIZES))
    out = []
    for r in range(ROUNDS):
        for s in SLOTS[r]:
            rows[s] = (x + deltas[r][s]).astype(np.float32)
        mean = weighted_mean(rows, SLOTS[r])
        xd, d = x.astype(np.float64), mean.astype(np.float64) - x.astype(np.float64)
        md, vd = m.astype(np.float64), v.astype(np.float64)
        t = r + 1
        if case["opt"] == "fedavg":
            new = mean.astype(np.float64)
        elif case["opt"] == "fedavgm":
            md = case["momentum"] * md - d
            new = xd - case["lr"] * md
        else:
            b1, b2 = case["beta1"], case["beta2"]
            md = b1 * md + (1 - b1) * d
            if case["opt"] == "fedadam":
                vd = b2 * vd + (1 - b2) * d**2
                eta = case["lr"] * np.sqrt(1 - b2 ** (t + 1.0)) / (1 - b1 ** (t + 1.0))
            else:
                vd = vd - (1 - b2) * d**2 * np.sign(vd - d**2)
                eta = case["lr"]
            new = xd + eta * md / (np.sqrt(vd) + case["tau"])
        m, v = md.astype(np.float32), vd.astype(np.float32)
        x = new.astype(np.float32)
        out.append(x.tolist())
    return out


def main():
    rng = np.random.default_rng(20210401)
    x0 = rng.normal(0, 0.1, P).astype(np.float32)
    deltas = rng.normal(0, 0.05, (ROUNDS, len(TRAIN_SIZES), P)).astype(np.float32)
    fixture = dict(
        numpy=np.__version__,
        p=P,
        train_sizes=TRAIN_SIZES,
        slots=SLOTS,
        x0=x0.tolist(),
        deltas=deltas.tolist(),
        cases=[dict(case, globals=trajectory(case, x0, deltas)) for case in CASES],
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
