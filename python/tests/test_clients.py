"""Clients (the K-client trainer) rejects what does not fit, naming it."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fedclip

D, C = 8, 3


def make(train, **options):
    text = json.dumps(fedclip.run_config(rounds=1, batch=4, test_domains=["photo"], **options))
    texts = np.random.default_rng(0).standard_normal((C, D)).astype(np.float32)
    return fedclip.Clients(text, texts, 2.0, train, "cpu"), fedclip.Strategy(text)


def data(n, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, D)).astype(np.float32), (np.arange(n) % C).astype(np.uint32)


def test_local_update_trains_only_the_planned_slots():
    clients, strategy = make([data(9, 1), data(6, 2)])
    glob = fedclip.initial_parameters(D, 0)
    assert clients.param_count == 2 * D * D + 2 * D and clients.train_sizes == [9, 6]
    before = clients.get_parameters()
    plan = strategy.configure_train(0, [1], glob)
    losses = clients.local_update(0, plan)
    after = clients.get_parameters()
    assert losses[0] == [] and len(losses[1]) == 2
    assert after[0].tobytes() == before[0].tobytes() and after[1].tobytes() != before[1].tobytes()
    clients.set_parameters(before)
    assert clients.get_parameters().tobytes() == before.tobytes()


def test_non_finite_features_are_runtimeerror_naming_the_round():
    bad_features, labels = data(4, 3)
    bad_features[2, 5] = np.nan
    clients, strategy = make([(bad_features, labels)])
    plan = strategy.configure_train(0, [0], fedclip.initial_parameters(D, 0))
    with pytest.raises(RuntimeError, match="round 0, local epoch 0, step 0: .*client 0"):
        clients.local_update(0, plan)


def test_shapes_that_do_not_fit_are_valueerror():
    features, labels = data(5, 4)
    with pytest.raises(ValueError, match=r"client 0: features must be \[N, 8\] with N labels"):
        make([(features, labels[:4])])
    clients, _ = make([(features, labels)])
    with pytest.raises(ValueError, match=r"parameters must be \[1, 144\]"):
        clients.set_parameters(np.zeros((2, 144), np.float32))
