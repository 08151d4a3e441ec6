"""fedclip from Python: CLIP encoders on fedclip's engine (CPU or CUDA), the feature cache
`fedclip run` uses, and whole federated runs.

    import fedclip
    model = fedclip.Model("weights/tiny-clip")          # device="auto" | "cpu" | "cuda"
    feats = model.encode_images(["a.jpg", "b.png"])     # np.ndarray [N, model.dim] float32
    texts = model.encode_texts(["a photo of a dog"])    # [M, model.dim]
    summary = fedclip.run(rounds=3, out="runs/demo")    # summary.json as a dict

Features are projected and not L2-normalised, exactly as `fedclip embed` writes them. Errors
are ValueError (bad options, shapes, file contents), OSError (a file that cannot be read or
written) or RuntimeError (an engine or device that fails), with the CLI's messages.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from ._fedclip import (
    BUNDLED_DATA,
    BUNDLED_MODEL,
    Client,
    Clients,
    FeatureStore,
    Model,
    RoundPlan,
    Splits,
    Stats,
    Strategy,
    default_server_lr,
    optimizer_settings,
    RunDir,
    domains,
    evaluate_splits,
    free_run_dir,
    initial_parameters,
    mean_loss,
    mean_of_rows,
    run_json,
    sample_clients,
    sweep_json,
    table_json,
)

__all__ = [
    "BUNDLED_DATA",
    "BUNDLED_MODEL",
    "Client",
    "Clients",
    "FeatureStore",
    "Model",
    "RoundPlan",
    "RunDir",
    "Splits",
    "Stats",
    "Strategy",
    "default_server_lr",
    "optimizer_settings",
    "domains",
    "evaluate_splits",
    "free_run_dir",
    "initial_parameters",
    "mean_loss",
    "mean_of_rows",
    "run",
    "run_config",
    "sample_clients",
    "sweep",
    "table",
]

PathLike = Union[str, "os.PathLike[str]"]


def run_config(
    data: PathLike = BUNDLED_DATA,
    model: PathLike = BUNDLED_MODEL,
    test_domains: Optional[Sequence[str]] = None,
    method: str = "fedclip",
    rounds: int = 200,
    local_epochs: int = 1,
    batch: int = 32,
    lr: Optional[float] = None,
    weight_decay: Optional[float] = None,
    optimizer: str = "adam",
    momentum: Optional[float] = None,
    lr_schedule: str = "constant",
    warmup_rounds: int = 0,
    warmup_lr: float = 1e-5,
    keep_optimizer_state: bool = False,
    loss: str = "contrastive",
    mu: float = 0.01,
    aggregate: str = "uniform",
    server_opt: str = "fedavg",
    server_lr: Optional[float] = None,
    server_momentum: float = 0.9,
    server_beta1: float = 0.9,
    server_beta2: float = 0.99,
    finetune_local_steps: int = 0,
    server_tau: float = 1e-3,
    clip_adapter_ratio: float = 0.2,
    tip_alpha: float = 1.0,
    tip_beta: float = 5.5,
    seed: int = 0,
    clients_per_domain: int = 1,
    dirichlet_alpha: float = 0.5,
    sample_fraction: float = 1.0,
    prompt_template: str = "a picture of a {}",
    extract_batch: int = 64,
    tokenizer: str = "openai",
    cache_dir: PathLike = "runs/feature-cache",
    out: Optional[PathLike] = None,
    max_image_pixels: int = 89_478_485,
    drop_empty_clients: bool = False,
    skip_bad: bool = False,
    n_ctx: Optional[int] = None,
    csc: bool = False,
    ctx_init: Optional[str] = None,
    class_token_position: Optional[str] = None,
    augment_views: int = 0,
    dp: str = "off",
    dp_delta: float = 1e-5,
) -> Dict[str, Any]:
    """The resolved settings `fedclip run` would write to config.json for these options.

    Every option is the CLI flag of the same name (`--local-epochs` is `local_epochs`), with
    the same default; `test_domains=None` holds out the first domain in sorted order and
    `out=None` is `runs/<method>[+<server_opt>]-<dataset>-<held-out domains>-seed<seed>`
    (`run` then takes the next free `-2`, `-3`, … as the CLI does), and
    `server_lr=None` is the server optimiser's default η, as the CLI does. `lr`,
    `weight_decay` and `momentum` left `None` take the optimiser's defaults as the CLI does
    (`optimizer_settings`); `momentum` is refused with Adam / AdamW. The prompt learner's
    options (`n_ctx`, `csc`, `ctx_init`, `class_token_position`) are `--method promptfl` /
    `coop`'s. Differential privacy (`dp`) runs from the CLI only for now (`fedclip run --dp
    client`): any `dp` but "off" is refused.
    """
    if dp != "off":
        raise ValueError(f"dp={dp!r}: differential privacy runs from the CLI only for now "
                         "(fedclip run --dp client ...); the Python run takes dp='off'")
    lr, weight_decay, momentum = optimizer_settings(optimizer, lr, weight_decay, momentum)
    data = os.fspath(data)
    if test_domains is None:
        test_domains = domains(data)[:1]
    elif isinstance(test_domains, str):
        raise ValueError("test_domains must be a list of domain names, not a string")
    if out is None:
        name = os.path.basename(os.path.normpath(data)) or "data"
        # As the CLI: a server optimiser other than plain averaging joins the method's name.
        label = method if server_opt == "fedavg" else f"{method}+{server_opt}"
        out = os.path.join("runs", f"{label}-{name}-{'+'.join(test_domains)}-seed{seed}")
    return {
        "data": data,
        "model": os.fspath(model),
        "test_domains": list(test_domains),
        "method": method,
        "rounds": rounds,
        "local_epochs": local_epochs,
        "batch": batch,
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "optimizer": optimizer,
        "momentum": float(momentum),
        "lr_schedule": lr_schedule,
        "warmup_rounds": warmup_rounds,
        "warmup_lr": float(warmup_lr),
        "keep_optimizer_state": keep_optimizer_state,
        "loss": loss,
        "mu": float(mu),
        "aggregate": aggregate,
        "server_opt": {
            "opt": server_opt,
            "lr": float(default_server_lr(server_opt) if server_lr is None else server_lr),
            "momentum": float(server_momentum),
            "beta1": float(server_beta1),
            "beta2": float(server_beta2),
            "tau": float(server_tau),
        },
        "finetune_local_steps": finetune_local_steps,
        "method_options": {
            "clip_adapter_ratio": float(clip_adapter_ratio),
            "tip_alpha": float(tip_alpha),
            "tip_beta": float(tip_beta),
        },
        "seed": seed,
        "clients_per_domain": clients_per_domain,
        "dirichlet_alpha": float(dirichlet_alpha),
        "sample_fraction": float(sample_fraction),
        "prompt_template": prompt_template,
        "extract_batch": extract_batch,
        "tokenizer": tokenizer,
        "cache_dir": os.fspath(cache_dir),
        "out": os.fspath(out),
        "max_image_pixels": max_image_pixels,
        "drop_empty_clients": drop_empty_clients,
        "skip_bad": skip_bad,
        "prompt": {
            "n_ctx": n_ctx,
            "csc": csc,
            "ctx_init": ctx_init,
            "class_token_position": class_token_position,
        },
        "augment_views": augment_views,
    }


def run(*, resume: bool = False, device: str = "auto",
        on_round: Optional[Callable[[int, List[Dict[str, Any]]], Any]] = None,
        **options: Any) -> Dict[str, Any]:
    """Runs (or with `resume=True` continues) `fedclip run` with these options (see
    `run_config`) and returns its summary.json as a dict. The run directory is written
    exactly as the CLI writes it. Without `out`, as the CLI: the default name if it holds
    nothing, else the next free `-2`, `-3`, … (with `resume`, the last of them), with a
    note on stderr saying which.

    `on_round(round, rows)` is called after each round, once its metrics and checkpoint are
    written: `round` counts the rounds finished (as metrics.csv), `rows` are that round's
    metrics.csv rows as dicts (client, split, accuracy, samples, loss), e.g. to log to
    TensorBoard, W&B or MLflow. An exception it raises stops the run after that round (resume
    continues it) and is raised from `run`."""
    config = run_config(**options)
    if options.get("out") is None:
        base = config["out"]
        config["out"] = os.fspath(free_run_dir(base, resume))
        if config["out"] != base:
            print(f"note: {base} already holds a run; "
                  f"{'resuming' if resume else 'writing to'} {config['out']}", file=sys.stderr)
    return json.loads(run_json(json.dumps(config), resume, device, on_round))


def _csv(items: Union[str, Sequence[Any]]) -> str:
    return items if isinstance(items, str) else ",".join(str(i) for i in items)


def sweep(out: PathLike, methods: Union[str, Sequence[str]],
          test_domains: Union[str, Sequence[str]] = "all",
          seeds: Union[str, Sequence[int]] = (0,), shard: Optional[str] = None,
          device: str = "auto", **options: Any) -> Dict[str, Any]:
    """`fedclip sweep`: every method × held-out domain × seed as a run directory inside `out`,
    sharing one feature cache (`cache_dir`, default `<out>/feature-cache`), resumable and
    shardable (`shard="i/n"`) as the CLI's; the other options are `run`'s, shared by every
    run. Writes the table files into `out` and returns what this call did (runs run, finished
    before, busy, failed, images encoded, table files)."""
    for per_cell in ("method", "test_domain", "seed", "out", "resume"):
        if per_cell in options:
            raise ValueError(f"sweep: {per_cell} is set per run by the sweep; "
                             "use methods, test_domains and seeds")
    options.setdefault("cache_dir", os.path.join(os.fspath(out), "feature-cache"))
    # Each run's method, held-out domain, seed and folder are the sweep's; the rest is shared.
    template = run_config(out=out, **options)
    return json.loads(sweep_json(json.dumps(template), os.fspath(out), _csv(methods),
                                 _csv(test_domains), _csv(seeds), shard, device))


def table(*dirs: PathLike, out: Optional[PathLike] = None) -> List[Dict[str, Any]]:
    """`fedclip table`'s long form for sweep or run directories: one dict per number
    (method, test_domain, seed, metric, value, status), so `pandas.DataFrame(rows)` works; a
    run without results gives one row with value None. With `out`, also writes table.md,
    .tex, .csv and .svg there."""
    paths = [os.fspath(d) for d in dirs]
    return json.loads(table_json(paths, None if out is None else os.fspath(out)))
