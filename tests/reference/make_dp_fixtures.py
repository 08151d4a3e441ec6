"""ε of the Poisson-subsampled Gaussian mechanism from Google's dp-accounting `RdpAccountant`
(default orders, default ADD_OR_REMOVE_ONE relation) over a grid of sampling rates q, noise
multipliers z, step counts T and δ, written to tests/fixtures/privacy/rdp_epsilons.json.
tests/privacy.rs checks fedclip's accountant against it (ε within 1e-6 relative).

The grid spans q from 1e-4 to 1, z from 0.3 to 10, T up to 1e5 and δ from 1e-3 to 1e-9, with
awkward values (q = 0.0137, z = 1.13, T = 37) beside round ones. Needs dp-accounting:
    /work/refvenv/bin/python tests/reference/make_dp_fixtures.py
"""

import json
from importlib.metadata import version
from pathlib import Path

from absl import logging
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant as rdp

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "privacy" / "rdp_epsilons.json"
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


if __name__ == "__main__":
    main()
