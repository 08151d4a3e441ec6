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


@pytest.mark.parametrize("method, names, count", [
    ("fedclip", ["attention.0.weight", "attention.0.bias", "attention.2.weight",
                 "attention.2.bias"], 2 * D * D + 2 * D),
    ("linear-probe", ["linear.weight", "linear.bias"], C * D + C),
    ("clip-adapter", ["fc.0.weight", "fc.2.weight"], 2 * D * (D // 4)),
    ("tip-adapter-f", ["cache.keys", "cache.values"], 9 * (D + C)),
])
def test_every_family_names_its_tensors_and_scores_splits(method, names, count):
    clients, strategy = make([data(9, 1), data(6, 2)], method=method)
    assert [n for n, _ in clients.tensors] == names
    assert sum(int(np.prod(s)) for _, s in clients.tensors) == clients.param_count == count
    assert clients.layout
    glob = clients.initial_parameters
    rows = clients.get_parameters()
    if method.startswith("tip"):
        # Each client starts from its own cache; the global is their union.
        assert glob.tobytes() == rows.tobytes()
    else:
        assert all(r.tobytes() == glob.tobytes() for r in rows)
    features, labels = data(7, 5)
    scored = clients.evaluate([("test", features, labels), ("val", features[:0], labels[:0])],
                              rows[0])
    assert [(s, n) for s, _, n in scored] == [("test", 7)] and 0 <= scored[0][1] <= 1
    zeroshot = clients.evaluate([("test", features, labels)])
    want = fedclip.evaluate_splits(np.random.default_rng(0).standard_normal((C, D)).astype(
        np.float32), [("test", features, labels)])
    assert zeroshot == want
    with pytest.raises(ValueError, match=f"{count + 1} values"):
        clients.evaluate([("test", features, labels)], np.zeros(count + 1, np.float32))


def test_tip_adapter_takes_the_federations_cache_capacity():
    text = json.dumps(fedclip.run_config(rounds=1, method="tip-adapter", test_domains=["photo"]))
    texts = np.random.default_rng(0).standard_normal((C, D)).astype(np.float32)
    clients = fedclip.Clients(text, texts, 2.0, [data(4, 1)], "cpu", cache_capacity=11)
    assert clients.param_count == 11 * (D + C) and clients.local_epochs == 0
    with pytest.raises(ValueError, match="cache capacity 3 is below a client's 4"):
        fedclip.Clients(text, texts, 2.0, [data(4, 1)], "cpu", cache_capacity=3)


def test_splits_refuse_a_domain_outside_the_federation():
    text = json.dumps(fedclip.run_config(rounds=1, clients_per_domain=2))
    with pytest.raises(ValueError, match="domain `art_painting` is not one of the federation's"):
        fedclip.Splits(text, ["cartoon", "photo", "sketch"])
