"""What both apps share: the run options from the Flower run config, the options Flower
cannot run yet, and adapter arrays under the names `adapter-*.safetensors` uses."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import numpy as np
from flwr.app import Array, ArrayRecord

import fedclip

# `[W1 | b1 | W2 | b2]` in the trainer's flat layout, PyTorch `[out, in]`.
NAMES = ["attention.0.weight", "attention.0.bias", "attention.2.weight", "attention.2.bias"]


def options(
    run_config: Dict[str, Any],
    node_config: Optional[Dict[str, Any]] = None,
    test_domains: Optional[List[str]] = None,
) -> Dict[str, Any]:
    """`fedclip.run_config(...)` from the app's run config (`kebab-case` keys, the CLI's
    flags) and, on a SuperNode, its node config (`data`, `model`, `cache-dir` and `device`
    may be set per node). `test_domains` are the held-out domains the server decided."""
    merged = {**run_config, **{k: v for k, v in (node_config or {}).items() if v != ""}}
    server_lr = float(merged.get("server-lr", 0.0))
    return fedclip.run_config(
        data=merged["data"] or ".",
        model=merged["model"] or fedclip.BUNDLED_MODEL,
        test_domains=test_domains if test_domains is not None else [],
        method=merged["method"],
        rounds=int(merged["rounds"]),
        local_epochs=int(merged["local-epochs"]),
        batch=int(merged["batch"]),
        lr=float(merged["lr"]),
        weight_decay=float(merged["weight-decay"]),
        optimizer=merged.get("optimizer", "adam"),
        keep_optimizer_state=bool(merged.get("keep-optimizer-state", False)),
        loss=merged.get("loss", "contrastive"),
        mu=float(merged["mu"]),
        aggregate=merged["aggregate"],
        server_opt=merged["server-opt"],
        server_lr=server_lr if server_lr > 0 else None,
        server_momentum=float(merged.get("server-momentum", 0.9)),
        server_beta1=float(merged.get("server-beta1", 0.9)),
        server_beta2=float(merged.get("server-beta2", 0.99)),
        server_tau=float(merged.get("server-tau", 1e-3)),
        seed=int(merged["seed"]),
        sample_fraction=float(merged["sample-fraction"]),
        prompt_template=merged.get("prompt-template", "a picture of a {}"),
        extract_batch=int(merged.get("extract-batch", 64)),
        tokenizer=merged.get("tokenizer", "openai"),
        cache_dir=merged.get("cache-dir", "runs/feature-cache"),
        out=merged.get("out") or "runs/flower",
    )


def check_supported(config: Dict[str, Any]) -> None:
    """Refuses, naming the option, what the Flower app cannot run yet."""
    if config["clients_per_domain"] != 1:
        # Each silo is one domain's folder; splitting a domain into Dirichlet clients
        # draws from the whole dataset's domain order, which a silo does not know.
        raise ValueError(f"clients-per-domain {config['clients_per_domain']} is not supported "
                         "on Flower yet: each silo holds one client (its domain folder)")
    if config["finetune_local_steps"] != 0:
        raise ValueError("finetune-local-steps is not supported on Flower yet")
    if config["skip_bad"] or config["drop_empty_clients"]:
        raise ValueError("skip-bad and drop-empty-clients are not supported on Flower yet")


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
