"""What both apps share: the run options from the Flower run config, and adapter arrays
under the names `adapter-*.safetensors` uses."""

from __future__ import annotations

import json
from typing import Any, Dict

import numpy as np
from flwr.app import Array, ArrayRecord

import fedclip

# `[W1 | b1 | W2 | b2]` in the trainer's flat layout, PyTorch `[out, in]`.
NAMES = ["attention.0.weight", "attention.0.bias", "attention.2.weight", "attention.2.bias"]


def options(run_config: Dict[str, Any], node_config: Dict[str, Any] | None = None) -> Dict[str, Any]:
    """`fedclip.run_config(...)` from the app's run config (`kebab-case` keys) and, on a
    SuperNode, its node config (`data`, `model` and `cache-dir` may be set per node)."""
    merged = {**run_config, **{k: v for k, v in (node_config or {}).items() if v != ""}}
    test_domain = merged.get("test-domain", "")
    return fedclip.run_config(
        data=merged["data"],
        model=merged["model"],
        test_domains=[test_domain] if test_domain else None,
        method=merged["method"],
        rounds=int(merged["rounds"]),
        local_epochs=int(merged["local-epochs"]),
        batch=int(merged["batch"]),
        lr=float(merged["lr"]),
        weight_decay=float(merged["weight-decay"]),
        mu=float(merged["mu"]),
        aggregate=merged["aggregate"],
        server_opt=merged["server-opt"],
        seed=int(merged["seed"]),
        sample_fraction=float(merged["sample-fraction"]),
        cache_dir=merged.get("cache-dir", "runs/feature-cache"),
        out=merged["out"],
    )


def to_record(flat: np.ndarray, dim: int) -> ArrayRecord:
    sizes = [dim * dim, dim, dim * dim, dim]
    shapes = [(dim, dim), (dim,), (dim, dim), (dim,)]
    parts = np.split(np.asarray(flat, dtype=np.float32), np.cumsum(sizes)[:-1])
    return ArrayRecord({n: Array(p.reshape(s)) for n, p, s in zip(NAMES, parts, shapes)})


def from_record(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([record[n].numpy().reshape(-1) for n in NAMES]).astype(np.float32)


def dim_of(param_count: int) -> int:
    """d from P = 2 d² + 2 d."""
    d = int((np.sqrt(1 + 2 * param_count) - 1) / 2)
    assert 2 * d * d + 2 * d == param_count, param_count
    return d


def dumps(config: Dict[str, Any]) -> str:
    return json.dumps(config)
