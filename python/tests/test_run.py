"""fedclip.run against `fedclip run`: the same options give the same run directory."""

from __future__ import annotations

import inspect
import json
import re

import pytest
from safetensors.numpy import load_file

import fedclip
from conftest import DATA, MODEL, run_cli

# Measured, not computed: they differ between any two runs.
TIMINGS = {"seconds_extracting", "seconds_training", "images_extracted", "images_from_cache"}


def test_run_equals_cli_run(cli, tmp_path):
    options = dict(rounds=3, method="fedprox", seed=3, clients_per_domain=2,
                   sample_fraction=0.5, batch=16, lr=1e-3)
    summary = fedclip.run(data=DATA, model=MODEL, cache_dir=tmp_path / "cache",
                          out=tmp_path / "py", device="cpu", **options)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    result = run_cli(cli, "run", "--data", str(DATA), "--model", str(MODEL), "--device", "cpu",
                     "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "cli"),
                     *flags)
    assert result.returncode == 0, result.stderr
    py, cli_dir = tmp_path / "py", tmp_path / "cli"
    for name in ["metrics.csv", "splits.json", "adapter-last.safetensors",
                 "adapter-best.safetensors", "accuracy.svg"]:
        assert (py / name).read_bytes() == (cli_dir / name).read_bytes(), name
    # state.safetensors' metadata holds the training time; its tensors must agree.
    state, cli_state = load_file(str(py / "state.safetensors")), load_file(str(cli_dir / "state.safetensors"))
    assert state.keys() == cli_state.keys()
    assert all(state[k].tobytes() == cli_state[k].tobytes() for k in state)
    written = json.loads((py / "summary.json").read_text())
    assert summary == written
    want = json.loads((cli_dir / "summary.json").read_text())
    strip = lambda s: {k: v for k, v in s.items() if k not in TIMINGS}
    assert strip(summary) == strip(want)
    assert summary["rounds_run"] == 3 and summary["method"] == "fedprox"
    config = json.loads((py / "config.json").read_text())
    cli_config = json.loads((cli_dir / "config.json").read_text())
    assert {**config, "out": None} == {**cli_config, "out": None}


def test_resume_continues_a_run(tmp_path):
    common = dict(data=DATA, model=MODEL, cache_dir=tmp_path / "cache", device="cpu")
    fedclip.run(rounds=1, out=tmp_path / "a", **common)
    resumed = fedclip.run(rounds=2, out=tmp_path / "a", resume=True, **common)
    whole = fedclip.run(rounds=2, out=tmp_path / "b", **common)
    assert resumed["rounds_run"] == 2
    assert (tmp_path / "a" / "metrics.csv").read_bytes() == (tmp_path / "b" / "metrics.csv").read_bytes()


def cli_defaults(cli) -> dict:
    """`[default: X]` of every `fedclip run` flag, from its --help."""
    text = run_cli(cli, "run", "--help").stdout
    defaults = {}
    for block in re.split(r"\n(?=\s+--)", text):
        flag = re.match(r"\s+--([a-z0-9-]+)", block)
        value = re.search(r"\[default: ([^\]]*)\]", block)
        if flag and value:
            defaults[flag.group(1).replace("-", "_")] = value.group(1).strip('"')
    return defaults


def test_run_options_are_the_cli_flags_with_its_defaults(cli):
    params = inspect.signature(fedclip.run_config).parameters
    cli = cli_defaults(cli)
    assert "rounds" in cli and "prompt_template" in cli
    # data and model default to the bundled paths of the checkout each was built from.
    for name, want in cli.items():
        if name in ("data", "model", "device"):
            continue
        assert name in params, f"fedclip.run has no option {name}"
        got = params[name].default
        if isinstance(got, float):
            assert got == float(want), name
        elif isinstance(got, bool):
            assert str(got).lower() == want, name
        else:
            assert str(got) == want, name
    assert params["data"].default == fedclip.BUNDLED_DATA
    assert params["model"].default == fedclip.BUNDLED_MODEL
    assert params["server_lr"].default is None  # the server optimiser's own default
    # The optimiser's own defaults (fedclip.optimizer_settings), as the CLI's.
    for name in ("lr", "weight_decay", "momentum"):
        assert params[name].default is None, name
    # Options whose CLI flags show no default: switches, and the bundled paths found at run time.
    flags = set(cli) | {"test_domains", "out", "keep_optimizer_state", "server_lr", "device",
                        "data", "model", "drop_empty_clients", "skip_bad", "lr", "weight_decay",
                        "momentum", "n_ctx", "csc", "ctx_init", "class_token_position",
                        "augment_views"}
    assert set(params) <= flags, set(params) - flags


def test_run_without_out_takes_the_next_free_folder_as_the_cli(cli, tmp_path, monkeypatch):
    # The CLI's default name, then its `-2`: the module follows the same numbering.
    monkeypatch.chdir(tmp_path)
    options = dict(rounds=1, server_opt="fedadam", seed=4)
    base = tmp_path / "runs" / "fedclip+fedadam-pacs-mini-art_painting-seed4"
    result = run_cli(cli, "run", "--data", str(DATA), "--model", str(MODEL), "--device", "cpu",
                     "--cache-dir", str(tmp_path / "cache"), "--rounds=1",
                     "--server-opt=fedadam", "--seed=4")
    assert result.returncode == 0, result.stderr
    assert (base / "summary.json").exists()
    fedclip.run(data=DATA, model=MODEL, cache_dir=tmp_path / "cache", device="cpu", **options)
    second = base.with_name(base.name + "-2")
    assert (second / "summary.json").exists()
    assert (second / "metrics.csv").read_bytes() == (base / "metrics.csv").read_bytes()
    fedclip.run(data=DATA, model=MODEL, cache_dir=tmp_path / "cache", device="cpu",
                resume=True, **options)  # continues -2 (already finished: nothing to add)
    assert not base.with_name(base.name + "-3").exists()


def test_optimizer_defaults_and_the_momentum_refusal_are_the_clis():
    assert fedclip.optimizer_settings("adam") == (5e-5, 0.2, 0.9)
    assert fedclip.optimizer_settings("sgd") == (0.002, 5e-4, 0.9)
    assert fedclip.optimizer_settings("sgd", 0.1, 0.0, 0.5) == (0.1, 0.0, 0.5)
    config = fedclip.run_config(data=DATA, test_domains=[], optimizer="sgd",
                                lr_schedule="cosine", warmup_rounds=1)
    assert (config["lr"], config["weight_decay"], config["momentum"]) == (0.002, 5e-4, 0.9)
    assert (config["lr_schedule"], config["warmup_rounds"], config["warmup_lr"]) == ("cosine", 1, 1e-5)
    with pytest.raises(ValueError, match="--momentum applies to --optimizer sgd only, not --optimizer adamw"):
        fedclip.run_config(data=DATA, test_domains=[], optimizer="adamw", momentum=0.5)
