"""Issue 23: inputs that would give a wrong result (NaN, a label that is no class, a sample
fraction that means nothing, a half-stepped update) are refused with a clear error."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import fedclip

D, C = 8, 3


def config(**options):
    return json.dumps(fedclip.run_config(rounds=1, batch=4, test_domains=["photo"], **options))


def texts():
    return np.random.default_rng(0).standard_normal((C, D)).astype(np.float32)


def data(n, seed, classes=C):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, D)).astype(np.float32), (np.arange(n) % classes).astype(np.uint32)


def test_weighted_aggregate_of_all_zero_sizes_is_valueerror():
    strategy = fedclip.Strategy(config(aggregate="weighted"))
    glob = fedclip.initial_parameters(D, 0)
    params = np.stack([glob, glob + 1])
    with pytest.raises(ValueError, match="sum to 0"):
        strategy.aggregate_train(0, glob, params, [0, 1], [0, 0])
    # One non-zero size is a valid weighting.
    out = strategy.aggregate_train(0, glob, params, [0, 1], [0, 3])
    assert np.array_equal(out, params[1])


def test_labels_that_are_no_class_are_valueerror():
    features, labels = data(5, 1, classes=C + 1)
    with pytest.raises(ValueError, match=r"client 0: label 3 \(row 3\) is not a class: there are 3"):
        fedclip.Clients(config(), texts(), 2.0, [(features, labels)], "cpu")
    clients = fedclip.Clients(config(), texts(), 2.0, [data(5, 2)], "cpu")
    with pytest.raises(ValueError, match=r"split val: label 3 \(row 3\)"):
        clients.evaluate([("val", features, labels)])
    with pytest.raises(ValueError, match=r"split test: label 3"):
        fedclip.evaluate_splits(texts(), [("test", features, labels)])


@pytest.mark.parametrize("fraction", [-1.0, 0.0, math.nan, 1.5])
def test_a_sample_fraction_outside_zero_one_is_valueerror(fraction):
    with pytest.raises(ValueError, match=r"sample fraction must be in \(0, 1\]"):
        fedclip.sample_clients(5, fraction, 0, 0)


def test_the_mean_of_zero_rows_is_valueerror():
    with pytest.raises(ValueError, match=r"mean_of_rows: params is \[0, 4\]"):
        fedclip.mean_of_rows(np.zeros((0, 4), np.float32))
    assert np.array_equal(fedclip.mean_of_rows(np.ones((2, 4), np.float32)), np.ones(4))


def test_a_failed_local_update_leaves_parameters_and_moments_untouched():
    # lr 1e30: the first step is finite, the next overflows and is refused: the update
    # must not leave the first step behind.
    text = config(lr=1e30, keep_optimizer_state=True)
    clients = fedclip.Clients(text, texts(), 2.0, [data(12, 1), data(12, 2)], "cpu")
    strategy = fedclip.Strategy(text)
    before = clients.get_parameters()
    m, v, steps = clients.optimizer_state()
    plan = strategy.configure_train(0, [0, 1], fedclip.initial_parameters(D, 0))
    with pytest.raises(RuntimeError, match="step [1-9]"):
        clients.local_update(0, plan)
    assert clients.get_parameters().tobytes() == before.tobytes()
    m2, v2, steps2 = clients.optimizer_state()
    assert m2.tobytes() == m.tobytes() and v2.tobytes() == v.tobytes() and steps2 == steps


def test_a_nan_logit_scale_is_refused_naming_it():
    for method in ["fedclip", "linear-probe", "tip-adapter"]:
        with pytest.raises((ValueError, RuntimeError), match="logit_scale"):
            fedclip.Clients(config(method=method), texts(), math.nan, [data(5, 1)], "cpu")
