"""The app's run options: the CLI's defaults, and a clear error for what Flower cannot run."""

from __future__ import annotations

import json
import pathlib
import sys
import tomllib

import pytest

import fedclip

FLOWER = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(FLOWER))
from fedclip_flower.common import check_supported, options  # noqa: E402


def app_config() -> dict:
    with open(FLOWER / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["flwr"]["app"]["config"]


def test_app_defaults_are_the_cli_defaults():
    # Apart from `rounds` (3 in the app, 200 in the CLI) and where things go.
    got = options(app_config(), {"data": "/silo/data", "cache-dir": "/silo/cache"}, ["photo"])
    want = fedclip.run_config(data="/silo/data", model=fedclip.BUNDLED_MODEL, rounds=3,
                              test_domains=["photo"], cache_dir="/silo/cache", out="runs/flower")
    assert got == want


def test_finetuning_a_method_without_a_global_model_is_refused_as_the_cli_does():
    config = fedclip.run_config(data="/silo/data", test_domains=[], method="local",
                                finetune_local_steps=2)
    with pytest.raises(ValueError, match="--finetune-local-steps needs a method with a global"):
        fedclip.Strategy(json.dumps(config))


def test_resume_with_kept_optimizer_state_is_refused_naming_both():
    config = fedclip.run_config(data="/silo/data", test_domains=[], keep_optimizer_state=True)
    check_supported(config)
    with pytest.raises(ValueError, match="resume with keep-optimizer-state is not supported"):
        check_supported(config, resume=True)


class UnknownDeploy:
    """A strategy whose clients deploy something the app cannot send (a future method)."""

    def configure_evaluate(self, slot=None):
        return ("class_cache", None)

    def deployed(self):
        return "global"


def test_a_method_the_app_cannot_move_is_refused_naming_it():
    from fedclip_flower.server_app import _check_method

    with pytest.raises(ValueError, match="method 'class-cache' is not supported on Flower yet"):
        _check_method(UnknownDeploy(), "class-cache")
    for method in ["fedclip", "fedprox", "local", "zeroshot", "linear-probe", "clip-adapter",
                   "tip-adapter", "tip-adapter-f"]:
        config = fedclip.run_config(data="/silo/data", test_domains=[], method=method)
        _check_method(fedclip.Strategy(json.dumps(config)), method)
