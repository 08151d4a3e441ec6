"""The strategy and client seams from Python, in `fedclip run`'s loop
(fedclip.federation.rounds), give `fedclip run`'s adapters bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

import fedclip
from fedclip.federation import rounds
from conftest import DATA, MODEL, run_cli


def flat_adapter(tensors: dict, prefix: str = "") -> np.ndarray:
    """`[W1 | b1 | W2 | b2]`, the trainer's layout, from an adapter-*.safetensors."""
    names = ["attention.0.weight", "attention.0.bias", "attention.2.weight", "attention.2.bias"]
    return np.concatenate([tensors[prefix + n].reshape(-1) for n in names])


@pytest.mark.parametrize("options", [
    dict(method="fedclip", rounds=3, batch=16, lr=1e-3),
    dict(method="fedprox", rounds=2, clients_per_domain=2, sample_fraction=0.5, seed=5,
         batch=8, lr=1e-3, mu=0.5, aggregate="weighted"),
    dict(method="fedclip", rounds=3, server_opt="fedadam", batch=16, lr=1e-3,
         keep_optimizer_state=True, local_epochs=2),
    dict(method="linear-probe", rounds=2, batch=16, lr=1e-3),
    dict(method="clip-adapter", rounds=2, batch=16, lr=1e-3, server_opt="fedavgm"),
    dict(method="tip-adapter", rounds=1),
    dict(method="tip-adapter-f", rounds=2, clients_per_domain=2, sample_fraction=0.5, seed=3,
         batch=8, lr=1e-3),
    dict(method="fedclip", rounds=3, batch=16, optimizer="sgd", momentum=0.8, lr=1e-2,
         lr_schedule="cosine", warmup_rounds=1, warmup_lr=1e-3, keep_optimizer_state=True),
    dict(method="linear-probe", rounds=3, batch=16, optimizer="sgd", lr_schedule="cosine"),
], ids=["fedclip", "fedprox-sampled-weighted", "fedadam", "linear-probe", "clip-adapter",
        "tip-adapter", "tip-adapter-f-sampled", "fedclip-sgd-cosine-warmup-kept",
        "linear-probe-sgd-cosine"])
def test_python_loop_equals_fedclip_run(cli, tmp_path, options):
    cache, out = tmp_path / "cache", tmp_path / "cli"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items() if v is not True]
    flags += [f"--{k.replace('_', '-')}" for k, v in options.items() if v is True]
    result = run_cli(cli, "run", "--data", str(DATA), "--model", str(MODEL), "--device", "cpu",
                     "--cache-dir", str(cache), "--out", str(out), *flags)
    assert result.returncode == 0, result.stderr
    config = fedclip.run_config(data=DATA, model=MODEL, cache_dir=cache, out=tmp_path / "py",
                                **options)
    model = fedclip.Model(MODEL, device="cpu")
    store = fedclip.FeatureStore(cache, model)
    glob, clients, losses = rounds(config, model, store, device="cpu")
    state = load_file(str(out / "state.safetensors"))
    assert glob.dtype == np.float32 and glob.tobytes() == state["global"].tobytes()
    assert clients.tobytes() == state["clients"].tobytes()
    if options["method"] in ("fedclip", "fedprox"):
        want = flat_adapter(load_file(str(out / "adapter-last.safetensors")))
        assert glob.tobytes() == want.tobytes()
    assert len(losses) == options["rounds"]
    assert any(l for l in losses[-1]) == (options["method"] != "tip-adapter")


def test_strategy_rejects_rows_that_do_not_fit():
    strategy = fedclip.Strategy(__import__("json").dumps(fedclip.run_config(rounds=1)))
    glob = np.zeros(10, dtype=np.float32)
    with pytest.raises(ValueError, match=r"params must be \[K, P\] with the global.s 10 values"):
        strategy.aggregate_train(0, glob, np.zeros((2, 9), dtype=np.float32), [0], [1, 1])
    with pytest.raises(ValueError, match="slot 4 is not a row"):
        strategy.aggregate_train(0, glob, np.zeros((2, 10), dtype=np.float32), [4], [1, 1])


def test_strategy_build_errors_have_the_cli_message(cli, tmp_path):
    from conftest import cli_error
    want = cli_error(run_cli(cli, "run", "--device", "cpu", "--method", "local",
                             "--server-opt", "fedadam", "--out", str(tmp_path / "o")))
    with pytest.raises(ValueError) as e:
        fedclip.Strategy(__import__("json").dumps(
            fedclip.run_config(method="local", server_opt="fedadam")))
    assert str(e.value) == want


def test_server_optimiser_state_round_trips():
    import json
    text = json.dumps(fedclip.run_config(rounds=3, server_opt="fedadam"))
    rng = np.random.default_rng(0)
    glob = rng.standard_normal(40).astype(np.float32)
    rows = [rng.standard_normal((2, 40)).astype(np.float32) for _ in range(2)]
    a = fedclip.Strategy(text)
    g1 = a.aggregate_train(0, glob, rows[0], [0, 1], [3, 4])
    saved = a.state()
    assert set(saved) and all(v.shape == (40,) for v in saved.values())
    b = fedclip.Strategy(text)
    b.load_state(saved)
    assert (b.aggregate_train(1, g1, rows[1], [0, 1], [3, 4]).tobytes()
            == a.aggregate_train(1, g1, rows[1], [0, 1], [3, 4]).tobytes())
    with pytest.raises(ValueError, match="server state"):
        fedclip.Strategy(json.dumps(fedclip.run_config(rounds=1))).load_state(saved)
