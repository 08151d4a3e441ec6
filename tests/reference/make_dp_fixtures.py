"""ε of the Poisson-subsampled Gaussian mechanism from Google's dp-accounting `RdpAccountant`
(default orders, default ADD_OR_REMOVE_ONE relation) over a grid of sampling rates q, noise
multipliers z, step counts T and δ, written to tests/fixtures/privacy/rdp_epsilons.json.
tests/privacy.rs checks fedclip's accountant against it (ε within 1e-6 relative).

It also writes tests/fixtures/privacy/clipped_mean.json: client-level DP's server step in
NumPy float64, θ_global + (Σ_s clip_C(θ_s − θ_global) + noise) / (qK) with given noise values,
on rows of awkward length, some clients over the clipping norm and some under, for
strategy::clipped_noised_mean.

The grid spans q from 1e-4 to 1, z from 0.3 to 10, T up to 1e5 and δ from 1e-3 to 1e-9, with
awkward values (q = 0.0137, z = 1.13, T = 37) beside round ones. Needs dp-accounting:
    /work/refvenv/bin/python tests/reference/make_dp_fixtures.py
"""

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
from absl import logging
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant as rdp

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "privacy"
OUT = FIXTURES / "rdp_epsilons.json"
QS = [1e-4, 1e-3, 0.0137, 0.1, 0.5, 1.0]
ZS = [0.3, 0.7, 1.0, 1.13, 2.5, 10.0]
STEPS = [1, 37, 1000, 100000]
DELTAS = [1e-3, 1e-5, 1e-9]


def epsilon(q, z, steps, delta):
    accountant = rdp.RdpAccountant()
    event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z))
    accountant.compose(event, steps)
    return accountant.get_epsilon(delta)


def main():
    # Orders whose fractional series does not converge are dropped with a warning each: expected.
    logging.set_verbosity(logging.ERROR)
    cases = [
        dict(q=q, z=z, steps=t, delta=d, epsilon=epsilon(q, z, t, d))
        for q in QS
        for z in ZS
        for t in STEPS
        for d in DELTAS
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = dict(
        source=f"dp-accounting {version('dp-accounting')} RdpAccountant",
        orders=list(rdp.DEFAULT_RDP_ORDERS),
        cases=cases,
    )
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(cases)} cases -> {OUT}")


def clipped_mean_case(rng, p, k, slots, clip, sigma, q):
    glob = rng.normal(0, 0.5, p).astype(np.float32)
    # Update norms spread around the clipping norm: some clipped, some not.
    scales = rng.uniform(0.2, 3.0, k) * clip / np.sqrt(p)
    params = (glob[None, :] + rng.normal(0, 1, (k, p)) * scales[:, None]).astype(np.float32)
    noise = rng.normal(0, sigma, p) if sigma > 0 else np.zeros(0)
    g64 = glob.astype(np.float64)
    total = np.zeros(p)
    norms = []
    for s in slots:
        delta = params[s].astype(np.float64) - g64
        norm = np.linalg.norm(delta)
        norms.append(norm)
        total += delta * min(1.0, clip / norm)
    if sigma > 0:
        total += noise
    expected = q * k
    mean = (g64 + total / expected).astype(np.float32)
    return dict(
        global_=glob.tolist(), params=params.ravel().tolist(), param_count=p, slots=slots,
        clip=clip, noise=noise.tolist(), expected=expected, norms=norms, mean=mean.tolist(),
    )


def write_clipped_mean():
    rng = np.random.default_rng(25)
    cases = [
        clipped_mean_case(rng, 37, 5, [0, 2, 3], 0.3, 0.3 * 1.1, 0.6),
        clipped_mean_case(rng, 37, 5, [0, 1, 2, 3, 4], 0.3, 0.0, 1.0),
        clipped_mean_case(rng, 101, 7, [1, 6], 2.0, 2.0 * 0.7, 0.3),
        clipped_mean_case(rng, 101, 7, [], 2.0, 2.0 * 0.7, 0.3),
    ]
    path = FIXTURES / "clipped_mean.json"
    text = json.dumps(dict(cases=cases)).replace('"global_"', '"global"')
    path.write_text(text + "\n")
    print(f"{len(cases)} cases -> {path}")


if __name__ == "__main__":
    main()
    write_clipped_mean()
