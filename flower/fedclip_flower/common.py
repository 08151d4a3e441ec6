"""What both apps share: the run options from the Flower run config, the options Flower
cannot run yet, and parameters as ArrayRecords under the names `adapter-*.safetensors` uses
(the method family's tensors, which a silo reports to the server)."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from flwr.app import Array, ArrayRecord

import fedclip


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
    # The methods' own options, when set (else fedclip's defaults).
    method_options = {flag.replace("-", "_"): float(merged[flag]) for flag in
                      ("clip-adapter-ratio", "tip-alpha", "tip-beta") if flag in merged}
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
        # SGD's momentum only when set (fedclip refuses it with Adam / AdamW).
        momentum=float(merged["momentum"]) if "momentum" in merged else None,
        lr_schedule=merged.get("lr-schedule", "constant"),
        warmup_rounds=int(merged.get("warmup-rounds", 0)),
        warmup_lr=float(merged.get("warmup-lr", 1e-5)),
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
        finetune_local_steps=int(merged.get("finetune-local-steps", 0)),
        skip_bad=bool(merged.get("skip-bad", False)),
        clients_per_domain=int(merged.get("clients-per-domain", 1)),
        dirichlet_alpha=float(merged.get("dirichlet-alpha", 0.5)),
        drop_empty_clients=bool(merged.get("drop-empty-clients", False)),
        prompt_template=merged.get("prompt-template", "a picture of a {}"),
        extract_batch=int(merged.get("extract-batch", 64)),
        tokenizer=merged.get("tokenizer", "openai"),
        cache_dir=merged.get("cache-dir", "runs/feature-cache"),
        out=merged.get("out") or "runs/flower",
        **method_options,
    )


def check_supported(config: Dict[str, Any], resume: bool = False) -> None:
    """Refuses, naming the option, what the Flower app cannot run yet."""
    if resume and config["keep_optimizer_state"]:
        raise ValueError("resume with keep-optimizer-state is not supported on Flower: Adam's "
                         "moments live in each SuperNode's Context of the interrupted run")


Tensors = List[Tuple[str, List[int]]]


def to_record(flat: np.ndarray, tensors: Tensors) -> ArrayRecord:
    """Parameters under their tensor names (`Clients.tensors`: one row's `(name, shape)`);
    several rows (Tip-Adapter's union of caches) are named `<row>.<name>`."""
    flat = np.asarray(flat, dtype=np.float32)
    count = sum(int(np.prod(shape)) for _, shape in tensors)
    rows = flat.reshape(-1, count)
    arrays = {}
    for r, row in enumerate(rows):
        prefix = f"{r}." if len(rows) > 1 else ""
        at = 0
        for name, shape in tensors:
            n = int(np.prod(shape))
            arrays[prefix + name] = Array(row[at:at + n].reshape(shape).copy())
            at += n
    return ArrayRecord(arrays)


def from_record(record: ArrayRecord, tensors: Tensors) -> np.ndarray:
    """The flat parameters `to_record` named, one row or several."""
    first = tensors[0][0]
    prefixes = [""] if first in record else []
    while not prefixes or f"{len(prefixes)}.{first}" in record:
        if f"{len(prefixes)}.{first}" not in record:
            raise ValueError(f"the parameters sent hold no tensor {first!r}")
        prefixes.append(f"{len(prefixes)}.")
    return np.concatenate([record[p + n].numpy().reshape(-1) for p in prefixes
                           for n, _ in tensors]).astype(np.float32)


def tensors_to_config(tensors: Tensors) -> Dict[str, Any]:
    """`(name, shape)` pairs as ConfigRecord values (flat lists)."""
    return {"tensor-names": [n for n, _ in tensors],
            "tensor-ranks": [len(s) for _, s in tensors],
            "tensor-dims": [int(d) for _, s in tensors for d in s] or [0]}


def tensors_from_config(info) -> Tensors:
    dims, tensors = list(info["tensor-dims"]), []
    for name, rank in zip(info["tensor-names"], info["tensor-ranks"]):
        tensors.append((name, [int(d) for d in dims[:rank]]))
        dims = dims[rank:]
    return tensors


def dumps(config: Dict[str, Any]) -> str:
    return json.dumps(config)
