"""One silo: its own data folder and feature cache. On each train message it extracts its
features (from the cache after first contact), runs `fedclip run`'s local epochs for its
trainer slot from the global adapter it was sent, and returns its adapter."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import fedclip
from fedclip.federation import client_features

from .common import dumps, from_record, options, to_record

app = ClientApp()


def _slot(context: Context) -> int:
    return int(context.node_config["partition-id"])


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Which trainer slot this node is, and how many training samples it has."""
    config = options(context.run_config, context.node_config)
    splits = fedclip.Splits(dumps(config))
    slot = _slot(context)
    client = splits.clients[splits.training_clients()[slot]]
    dim = fedclip.Model(config["model"], device="cpu").dim
    reply = ConfigRecord({"slot": slot, "name": client.name, "dim": dim,
                          "num-examples": len(client.train[1])})
    return Message(RecordDict({"info": reply}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = options(context.run_config, context.node_config)
    text = dumps(config)
    slot = _slot(context)
    splits = fedclip.Splits(text)
    model = fedclip.Model(config["model"], device="auto", tokenizer=config["tokenizer"])
    store = fedclip.FeatureStore(config["cache_dir"], model)
    train_data, texts = client_features(store, splits, config["extract_batch"])
    # Every slot exists (the batch order is keyed by the slot), only this node's has data.
    empty = (np.zeros((0, model.dim), np.float32), np.zeros(0, np.uint32))
    data = [d if k == slot else empty for k, d in enumerate(train_data)]
    assert model.logit_scale is not None, f"{config['model']}: no logit_scale"
    clients = fedclip.Clients(text, texts, model.logit_scale, data, "auto")
    round = int(msg.content["config"]["round"])
    glob = from_record(msg.content["arrays"])
    strategy = fedclip.Strategy(text)
    plan = strategy.configure_train(round, [slot], glob)
    losses = clients.local_update(round, plan)[slot]
    params = clients.get_parameters()[slot]
    metrics = MetricRecord({
        "num-examples": len(data[slot][1]),
        "train-loss": float(np.mean(losses)) if losses else float("nan"),
    })
    return Message(RecordDict({"arrays": to_record(params, model.dim), "metrics": metrics}),
                   reply_to=msg)
