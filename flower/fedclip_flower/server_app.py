"""The server: fedclip's strategy for the run's `method` and `server-opt` (uniform averaging
by default, as `fedclip run` and the FedCLIP reference; Flower's own FedAvg would weight by
example count), the run's client sampling, and the final global adapter written as
`adapter-last.safetensors` in `out`."""

from __future__ import annotations

import json
import os

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from safetensors.numpy import save_file

import fedclip

from .common import NAMES, dumps, from_record, options, to_record

app = ServerApp()


def _slots(grid: Grid, nodes) -> tuple:
    """Trainer slot → (node id, training samples), and the adapter's d, asked of every node."""
    asks = [Message(RecordDict({"q": ConfigRecord({})}), dst_node_id=n, message_type="query")
            for n in nodes]
    found, dims = {}, set()
    for reply in grid.send_and_receive(asks):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id}: {reply.error}")
        info = reply.content["info"]
        found[int(info["slot"])] = (reply.metadata.src_node_id, int(info["num-examples"]))
        dims.add(int(info["dim"]))
    if len(dims) != 1:
        raise RuntimeError(f"the nodes' models disagree on the feature size: {sorted(dims)}")
    return found, dims.pop()


def _save(out: str, glob: np.ndarray, dim: int) -> None:
    os.makedirs(out, exist_ok=True)
    parts = np.split(np.asarray(glob, np.float32), np.cumsum([dim * dim, dim, dim * dim]))
    shapes = [(dim, dim), (dim,), (dim, dim), (dim,)]
    tensors = {n: np.ascontiguousarray(p.reshape(s)) for n, p, s in zip(NAMES, parts, shapes)}
    save_file(tensors, os.path.join(out, "adapter-last.safetensors"))


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = options(context.run_config)
    strategy = fedclip.Strategy(dumps(config))
    if strategy.deployed() != "global":
        # A ClientApp keeps nothing between messages, so each round must start from the
        # global adapter the server sends (fedclip, fedprox; any server optimiser).
        raise ValueError(f"method {config['method']!r} is not supported on Flower yet: "
                         "use fedclip or fedprox")
    nodes = list(grid.get_node_ids())
    while len(nodes) < int(context.run_config.get("num-nodes", 1)):
        nodes = list(grid.get_node_ids())
    slots, dim = _slots(grid, nodes)
    k = len(slots)
    if sorted(slots) != list(range(k)):
        raise RuntimeError(f"partition ids must be 0..{k - 1}, got {sorted(slots)}")
    train_sizes = [slots[s][1] for s in range(k)]
    glob = fedclip.initial_parameters(dim, config["seed"])
    params = np.tile(glob, (k, 1))
    for round in range(strategy.rounds(config["rounds"])):
        sampled = fedclip.sample_clients(k, config["sample_fraction"], config["seed"], round)
        plan = strategy.configure_train(round, sampled, glob)
        if plan is None:
            continue
        messages = [
            Message(RecordDict({"config": ConfigRecord({"round": round}),
                                "arrays": to_record(glob, dim)}),
                    dst_node_id=slots[s][0], message_type="train")
            for s in plan.slots
        ]
        by_node = {slots[s][0]: s for s in plan.slots}
        for reply in grid.send_and_receive(messages):
            if reply.has_error():
                raise RuntimeError(f"node {reply.metadata.src_node_id}: {reply.error}")
            params[by_node[reply.metadata.src_node_id]] = from_record(reply.content["arrays"])
        new = strategy.aggregate_train(round, glob, params, plan.slots, train_sizes)
        if new is not None:
            glob = new
        print(f"round {round + 1}: {len(plan.slots)} clients", flush=True)
    _save(config["out"], glob, dim)
    with open(os.path.join(config["out"], "config.json"), "w") as f:
        json.dump(config, f, indent=2)
