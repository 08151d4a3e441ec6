"""The server: `fedclip run`'s rounds over Flower messages. fedclip's strategy for the run's
`method` and `server-opt` (uniform averaging by default, as `fedclip run` and the FedCLIP
reference; Flower's own FedAvg would weight by example count), the run's client sampling,
the same evaluation of every client and split each round (each silo scores its own data),
and the same run directory: config.json, metrics.csv, the adapters, accuracy.svg and
summary.json, written by fedclip's own code (`fedclip.RunDir`)."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

import fedclip

from .common import (check_supported, dumps, from_record, options, tensors_from_config,
                     to_record)

app = ServerApp()


@dataclass
class Federation:
    """Every client in `fedclip run`'s order (domain order), the node holding it, and the
    trainer slots (client indices of the training clients)."""

    names: List[str] = field(default_factory=list)
    held_out: List[bool] = field(default_factory=list)
    nodes: List[int] = field(default_factory=list)
    train_sizes: Dict[int, int] = field(default_factory=dict)
    trainees: List[int] = field(default_factory=list)
    test_domains: List[str] = field(default_factory=list)
    # Every silo's domains, sorted (the Dirichlet partition of a domain is keyed by its place).
    domains: List[str] = field(default_factory=list)
    dim: int = 0
    # The method family's, from a silo (`_layout`): one client's tensors, their layout text,
    # the values per client, and the round-0 global parameters.
    tensors: List[Tuple[str, List[int]]] = field(default_factory=list)
    layout: str = ""
    param_count: int = 0
    initial: Optional[np.ndarray] = None
    # Whether each client starts from its own data (Tip-Adapter's caches).
    rows_are_data: bool = False
    images_extracted: int = 0
    images_from_cache: int = 0
    # With skip-bad: the images the silos left out, relative to their data folders.
    skipped_images: List[str] = field(default_factory=list)
    seconds_extracting: float = 0.0


REPLY_TIMEOUT_S = 3600.0


def _exchange(grid: Grid, messages: List[Message]) -> List[Message]:
    """Sends `messages` and returns their replies in the same order, raising a node's error.
    (`Grid.send_and_receive`, polled every 0.2 s instead of every 3 s.)"""
    ids = [i for i in grid.push_messages(messages)]
    pending, replies = set(ids), {}
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} of {len(ids)} nodes did not answer in "
                               f"{REPLY_TIMEOUT_S:.0f} s")
        for reply in grid.pull_messages(list(pending)):
            replies[reply.metadata.reply_to_message_id] = reply
            pending.discard(reply.metadata.reply_to_message_id)
        if pending:
            time.sleep(0.2)
    ordered = [replies[i] for i in ids]
    for reply in ordered:
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id}: {reply.error}")
    return ordered


def _ask(grid: Grid, nodes, content: Dict, message_type: str) -> List[Message]:
    messages = [Message(RecordDict({"config": ConfigRecord(content)}), dst_node_id=n,
                        message_type=message_type) for n in nodes]
    return _exchange(grid, messages)


def _domains(grid: Grid, nodes) -> List[str]:
    """Every silo's domains, in `fedclip run`'s (sorted) order."""
    domains = []
    for reply in _ask(grid, nodes, {"step": "domains"}, "query"):
        domains.extend(reply.content["info"]["domains"])
    return sorted(domains)


def _test_domains(domains: List[str], wanted: str) -> List[str]:
    """The held-out domains: `test-domain`, else the first domain in sorted order over every
    silo's domains (as `fedclip run`)."""
    return [wanted] if wanted else domains[:1]


def _check_silos(replies: List[Message], test_domains: List[str]) -> None:
    """The silos must agree on the classes, and one must hold each held-out domain."""
    classes = {r.metadata.src_node_id: list(r.content["info"]["classes"]) for r in replies}
    if len({tuple(c) for c in classes.values()}) != 1:
        raise ValueError(f"the silos' class folders differ: {classes}")
    held = {d for r in replies for d in r.content["info"]["domains"]}
    for d in test_domains:
        if d not in held:
            raise ValueError(f"test-domain {d}: no silo holds it (domains: {sorted(held)})")


def _client_order(name: str) -> Tuple[str, int]:
    """`fedclip run`'s client order: by domain, then a partitioned domain's `<domain>#<i>`
    by i."""
    domain, _, index = name.partition("#")
    return domain, int(index or 0)


def _federation(grid: Grid, nodes, domains: List[str], test_domains: List[str]) -> Federation:
    fed = Federation(test_domains=test_domains, domains=domains)
    found = []
    dims = set()
    replies = _ask(grid, nodes, {"step": "clients", "test-domains": test_domains,
                                 "federation-domains": domains}, "query")
    _check_silos(replies, test_domains)
    for reply in replies:
        info = reply.content["info"]
        node = reply.metadata.src_node_id
        for name, held, size in zip(info["names"], info["held-out"], info["train-sizes"]):
            found.append((name, bool(held), node, int(size)))
        dims.add(int(info["dim"]))
        fed.images_extracted += int(info["images-extracted"])
        fed.images_from_cache += int(info["images-from-cache"])
        fed.seconds_extracting += float(info["seconds-extracting"])
        fed.skipped_images += list(info["skipped-images"])[:int(info["skipped-count"])]
    if len(dims) != 1:
        raise RuntimeError(f"the nodes' models disagree on the feature size: {sorted(dims)}")
    names = [f[0] for f in found]
    if len(set(names)) != len(names):
        raise ValueError(f"two silos hold the same domain: {sorted(names)}")
    for c, (name, held, node, size) in enumerate(sorted(found, key=lambda f: _client_order(f[0]))):
        fed.names.append(name)
        fed.held_out.append(held)
        fed.nodes.append(node)
        if not held:
            fed.train_sizes[len(fed.trainees)] = size
            fed.trainees.append(c)
    if not fed.trainees:
        raise ValueError("every domain is held out: no client to train")
    fed.dim = dims.pop()
    # In domain order, as `fedclip run` lists them.
    fed.skipped_images.sort(key=lambda p: p.split("/")[0])
    return fed


def _config(fed: Federation, **items) -> ConfigRecord:
    """A message's settings: the held-out domains and Tip-Adapter's cache capacity (the
    largest train split, as `fedclip run` sizes every cache) travel with each."""
    capacity = max(fed.train_sizes.values(), default=0)
    return ConfigRecord({**items, "test-domains": fed.test_domains, "cache-capacity": capacity,
                         "federation-domains": fed.domains})


def _layout(grid: Grid, fed: Federation) -> None:
    """Asks the first training client's silo for the family's tensors and round-0 global."""
    c = fed.trainees[0]
    message = Message(RecordDict({"config": _config(fed, step="layout", client=fed.names[c])}),
                      dst_node_id=fed.nodes[c], message_type="query")
    reply = _exchange(grid, [message])[0]
    info = reply.content["info"]
    fed.tensors = tensors_from_config(info)
    fed.layout = str(info["layout"])
    fed.param_count = int(info["param-count"])
    fed.initial = reply.content["initial"]["initial"].numpy().astype(np.float32)


def _train(grid, fed, plan, params, round) -> Tuple[List[np.ndarray], float]:
    """Sends each planned slot its start (the plan's, or its own parameters when the server
    holds them; else the silo starts from its own) and FedProx's anchor; stores what comes
    back in `params`. Returns each slot's step losses."""
    k = len(fed.trainees)
    messages = []
    for s in plan.slots:
        start = plan.start if plan.start is not None else params[s]
        content = {"config": _config(fed, round=round, slot=s, slots=k, mu=float(plan.mu),
                                     client=fed.names[fed.trainees[s]])}
        if start is not None:
            content["arrays"] = to_record(start, fed.tensors)
        if plan.anchor is not None:
            content["anchor"] = to_record(plan.anchor, fed.tensors)
        messages.append(Message(RecordDict(content), dst_node_id=fed.nodes[fed.trainees[s]],
                                message_type="train"))
    losses: List[np.ndarray] = [np.zeros(0, np.float32)] * k
    t0 = time.monotonic()
    for reply, s in zip(_exchange(grid, messages), plan.slots):
        params[s] = from_record(reply.content["arrays"], fed.tensors)
        losses[s] = reply.content["losses"]["losses"].numpy()
    return losses, time.monotonic() - t0


def _rows(fed: Federation, params) -> np.ndarray:
    """`[K, P]` of the rows the server holds; a row never sent back is the family's start
    (`fedclip run`'s rows before their first update), or zeros for a method whose start is
    each client's own data (Tip-Adapter's cache, which the server has not received)."""
    fill = (fed.initial if len(fed.initial) == fed.param_count and not fed.rows_are_data
            else np.zeros(fed.param_count, np.float32))
    return np.stack([p if p is not None else fill for p in params]).astype(np.float32)


def _deployed(strategy, fed, c, glob, params) -> Tuple[str, Optional[np.ndarray]]:
    """What client `c` deploys, as `fedclip run` evaluates it: `("zeroshot", None)`, `("own",
    None)` (its own start, which the server does not hold) or `("sent", parameters)`."""
    slot = fed.trainees.index(c) if c in fed.trainees else None
    kind, own = strategy.configure_evaluate(slot)
    if kind == "zeroshot":
        return "zeroshot", None
    if kind == "global":
        return "sent", glob
    if kind == "own":
        return ("own", None) if params[own] is None else ("sent", params[own])
    return "sent", fedclip.mean_of_rows(_rows(fed, params))


def _evaluate(grid, fed, strategy, glob, params, losses, round) -> Tuple[list, float]:
    """Round `round`'s metrics.csv rows (every client, its silo scoring it) and the mean
    validation accuracy over training clients, the best-round criterion."""
    messages = []
    for c, name in enumerate(fed.names):
        deploy, deployed = _deployed(strategy, fed, c, glob, params)
        content = {"config": _config(fed, client=name, round=round, deploy=deploy)}
        if deployed is not None:
            content["arrays"] = to_record(deployed, fed.tensors)
        messages.append(Message(RecordDict(content), dst_node_id=fed.nodes[c],
                                message_type="evaluate"))
    replies = _exchange(grid, messages)
    rows, val_sum, val_n = [], 0.0, 0
    for c, reply in enumerate(replies):
        scores = reply.content["scores"]
        slot = fed.trainees.index(c) if c in fed.trainees else None
        loss = fedclip.mean_loss(list(losses[slot])) if slot is not None else None
        n = int(scores["rows"])
        for split, acc, samples in list(zip(scores["splits"], scores["accuracy"],
                                            scores["samples"]))[:n]:
            if split == "val" and not fed.held_out[c]:
                val_sum, val_n = val_sum + acc, val_n + 1
            rows.append((round + 1, fed.names[c], split, float(acc), int(samples),
                         loss if split == "train" else None))
    # No validation rows at all: NaN, as `fedclip run` (the best round is then the last).
    return rows, (val_sum / val_n if val_n else math.nan)


KNOWN_DEPLOYS = {"zeroshot", "global", "own", "mean_of_local"}


def _check_method(strategy, method: str) -> None:
    """Refuses, naming it, a method whose adapters the app does not know how to move."""
    kinds = {strategy.configure_evaluate(0)[0], strategy.configure_evaluate(None)[0]}
    if not kinds <= KNOWN_DEPLOYS or strategy.deployed() not in {"nothing", "global",
                                                                  "each_client"}:
        raise ValueError(f"method {method!r} is not supported on Flower yet (it deploys "
                         f"{sorted(kinds)}, its run keeps {strategy.deployed()!r})")


def _nodes(grid: Grid, wanted: int, timeout_s: float = 600.0) -> List[int]:
    deadline = time.monotonic() + timeout_s
    nodes = list(grid.get_node_ids())
    while len(nodes) < wanted:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(nodes)} of num-nodes {wanted} SuperNodes connected")
        time.sleep(0.5)
        nodes = list(grid.get_node_ids())
    return nodes


@app.main()
def main(grid: Grid, context: Context) -> None:
    nodes = _nodes(grid, int(context.run_config.get("num-nodes", 1)))
    wanted = str(context.run_config.get("test-domain", ""))
    domains = _domains(grid, nodes)
    test_domains = _test_domains(domains, wanted)
    config = options(context.run_config, None, test_domains)
    if not context.run_config.get("data"):
        # The data is on the silos; the run directory's config names no folder of the server.
        config["data"] = "silos"
    resume = bool(context.run_config.get("resume", False))
    if not context.run_config.get("out"):
        config["out"] = str(fedclip.free_run_dir(
            os.path.join("runs", f"flower-{config['method']}-seed{config['seed']}"), resume))
    check_supported(config, resume)
    strategy = fedclip.Strategy(dumps(config))
    _check_method(strategy, config["method"])
    fed = _federation(grid, nodes, domains, test_domains)
    run_dir = fedclip.RunDir(dumps(config), resume)
    summary = rounds(grid, config, strategy, fed, run_dir)
    print(f"fedclip on Flower: {run_dir.out}: best round {summary['best_round']}", flush=True)


@dataclass
class Progress:
    """What `state.safetensors` keeps between rounds: the global parameters, the rows the
    server holds (None: never sent back), the best round `(round, val, deployed)`, bytes
    and training time."""

    glob: np.ndarray
    params: List[Optional[np.ndarray]]
    best: Optional[Tuple[int, float, np.ndarray]] = None
    bytes_per_round: List[Tuple[int, int]] = field(default_factory=list)
    seconds_training: float = 0.0
    done: int = 0


def _start(strategy, fed, run_dir) -> Progress:
    """Round 0's progress, or the interrupted run's (a resumed Tip-Adapter row of zeros is
    one the server never received)."""
    k = len(fed.trainees)
    saved = run_dir.saved
    if saved is None:
        # Tip-Adapter's global is the union of caches the server has received (none yet);
        # no round uses it before the first aggregate.
        return Progress(glob=fed.initial, params=[None] * k)
    rows = np.asarray(saved["clients"], np.float32).reshape(k, fed.param_count)
    params = [None if fed.rows_are_data and not r.any() else r.copy() for r in rows]
    strategy.load_state(saved["server"])
    best = saved["best"]
    return Progress(glob=np.asarray(saved["global"], np.float32), params=params,
                    best=None if best is None else (best[0], best[1], np.asarray(best[2])),
                    bytes_per_round=[tuple(b) for b in saved["bytes_per_round"]],
                    seconds_training=saved["seconds_training"], done=saved["rounds_done"])


def _save(run_dir, strategy, fed, p: Progress) -> None:
    run_dir.save_state(p.done, p.glob, _rows(fed, p.params), p.best, p.seconds_training,
                       p.bytes_per_round, strategy.state())


def rounds(grid, config, strategy, fed, run_dir) -> dict:
    """`fedclip run`'s loop: plan, local updates on the silos, aggregation, evaluation of
    every client, the best round and a checkpoint after each; then the adapters and the
    summary."""
    k = len(fed.trainees)
    _layout(grid, fed)
    fed.rows_are_data = strategy.family == "tip-cache"
    p = _start(strategy, fed, run_dir)
    train_sizes = [fed.train_sizes[s] for s in range(k)]
    total = strategy.rounds(config["rounds"])
    for round in range(p.done, total):
        sampled = fedclip.sample_clients(k, config["sample_fraction"], config["seed"], round)
        plan = strategy.configure_train(round, sampled, p.glob)
        losses = [np.zeros(0, np.float32)] * k
        round_bytes = (0, 0)
        if plan is not None:
            losses, seconds = _train(grid, fed, plan, p.params, round)
            p.seconds_training += seconds
            new = strategy.aggregate_train(round, p.glob, _rows(fed, p.params), plan.slots,
                                           train_sizes)
            if new is not None:
                p.glob = new
            round_bytes = strategy.bytes(plan, fed.param_count, fed.dim, train_sizes)
        p.bytes_per_round.append(round_bytes)
        rows, mean_val = _evaluate(grid, fed, strategy, p.glob, p.params, losses, round)
        run_dir.append_rows(rows)
        if p.best is None or math.isnan(mean_val) or mean_val > p.best[1]:
            p.best = (round + 1, mean_val, _deploy(strategy, fed, p.glob, p.params))
        p.done = round + 1
        _save(run_dir, strategy, fed, p)
        val = ("no validation files" if math.isnan(mean_val)
               else f"mean val accuracy {100 * mean_val:.2f}%")
        print(f"round {round + 1}/{total}: {val}", flush=True)
    if strategy.deployed() != "nothing":
        for file, values in [("adapter-last.safetensors", _deploy(strategy, fed, p.glob, p.params)),
                             ("adapter-best.safetensors", p.best[2])]:
            rows, names = _named(strategy, fed, values)
            run_dir.write_adapter(file, rows, names, fed.tensors, fed.layout)
    finetuned = _finetune(grid, fed, p.glob) if config["finetune_local_steps"] > 0 else None
    text = run_dir.finish(
        list(zip(fed.names, fed.held_out)), fed.trainees, p.done, p.best[:2], fed.param_count,
        fed.images_extracted, fed.images_from_cache, p.bytes_per_round,
        seconds_extracting=fed.seconds_extracting, seconds_training=p.seconds_training,
        finetuned=finetuned, skipped_images=fed.skipped_images)
    return json.loads(text)


def _finetune(grid, fed, glob) -> Dict[str, float]:
    """Each training client's test accuracy after `finetune-local-steps` from the final
    global parameters, fine-tuned and scored on its silo (clients without a test split
    left out, as `fedclip run`)."""
    k = len(fed.trainees)
    messages = [Message(RecordDict({
        "config": _config(fed, step="finetune", client=fed.names[c], slot=s, slots=k),
        "arrays": to_record(glob, fed.tensors)}), dst_node_id=fed.nodes[c], message_type="query")
        for s, c in enumerate(fed.trainees)]
    out = {}
    for reply, c in zip(_exchange(grid, messages), fed.trainees):
        scores = reply.content["scores"]
        if int(scores["rows"]):
            out[fed.names[c]] = float(scores["accuracy"][0])
    return out


def _deploy(strategy, fed, glob, params) -> np.ndarray:
    """What the run deploys now, flat: every client's parameters (`[K, P]`, a Tip-Adapter
    cache the server never received as zeros), or the global ones."""
    if strategy.deployed() == "each_client":
        return _rows(fed, params).reshape(-1)
    return np.asarray(glob, np.float32).copy()


def _named(strategy, fed, values) -> Tuple[np.ndarray, List[str]]:
    """Deployed `values` as adapter-file rows `[R, P]` and their names. A Tip-Adapter cache
    the server never received (all zeros) stays on its silo and is left out (with
    `sample-fraction` < 1), where `fedclip run` writes every client's."""
    rows = np.asarray(values, np.float32).reshape(-1, fed.param_count)
    if strategy.deployed() != "each_client":
        return rows, ["global"]
    held = [s for s in range(len(rows)) if rows[s].any() or not fed.rows_are_data]
    return rows[held], [fed.names[fed.trainees[s]] for s in held]
