"""One silo: its own data folder (`data` in the node config: one or more domain folders) and
its own feature cache (`cache-dir`). It answers three messages:

* `query`, step `domains`: its domains; step `clients`: its domains, classes and clients
  under the server's held-out domains, after extracting every file once (first contact; the cache
  answers later messages);
* `train`: the local epochs of `fedclip run` for one trainer slot, from the parameters sent;
* `evaluate`: the accuracy of the parameters sent (or zero-shot) on each of its splits.

Nothing leaves the silo but parameters, losses, counts and accuracies."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Tuple

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import fedclip

from .common import dumps, from_record, options, to_record

app = ClientApp()


def _config(context: Context, test_domains: List[str]) -> Dict[str, Any]:
    return options(context.run_config, context.node_config, test_domains)


def _own_test_domains(context: Context, held_out: List[str]) -> List[str]:
    data = options(context.run_config, context.node_config)["data"]
    return [d for d in fedclip.domains(data) if d in held_out]


def _clients(context: Context, held_out: List[str]) -> Tuple[Dict[str, Any], List[Any], Any]:
    """This silo's settings and its clients as `(name, held_out, splits)`, `splits` being
    `[(split, paths, labels)]`. A silo of held-out domains only scores every file, as
    `fedclip run`'s held-out clients do."""
    own = _own_test_domains(context, held_out)
    every = fedclip.domains(options(context.run_config, context.node_config)["data"])
    all_held_out = len(own) == len(every)
    config = _config(context, [] if all_held_out else own)
    splits = fedclip.Splits(dumps(config))
    clients = []
    for c in splits.clients:
        if all_held_out:
            clients.append((c.name, True, [("test", *c.files)]))
        else:
            clients.append((c.name, c.held_out, [("train", *c.train), ("val", *c.val),
                                                 ("test", *c.test)]))
    return config, clients, splits


def _device(context: Context) -> str:
    """`device` of the node config, else of the run config (`auto` by default)."""
    return str(context.node_config.get("device") or context.run_config.get("device") or "auto")


def _store(config: Dict[str, Any], device: str) -> Tuple[fedclip.Model, fedclip.FeatureStore]:
    model = fedclip.Model(config["model"], device=device,
                          tokenizer=config["tokenizer"])
    return model, fedclip.FeatureStore(config["cache_dir"], model)


def _held_out(msg: Message) -> List[str]:
    return list(msg.content["config"].get("test-domains", []))


@app.query()
def query(msg: Message, context: Context) -> Message:
    step = msg.content["config"]["step"]
    if step == "domains":
        reply = ConfigRecord({"domains": fedclip.domains(_config(context, [])["data"])})
        return Message(RecordDict({"info": reply}), reply_to=msg)
    config, clients, splits = _clients(context, _held_out(msg))
    model, store = _store(config, _device(context))
    start = time.monotonic()
    extracted = from_cache = 0
    for c in splits.clients:
        _, stats = store.image_features(c.files[0], config["extract_batch"])
        extracted, from_cache = extracted + stats.computed, from_cache + stats.hits
    store.text_features(splits.prompts, config["extract_batch"])
    reply = ConfigRecord({
        "domains": fedclip.domains(config["data"]),
        "classes": splits.classes,
        "names": [name for name, _, _ in clients],
        "held-out": [held for _, held, _ in clients],
        "train-sizes": [len(s[0][2]) if not held else 0 for _, held, s in clients],
        "dim": model.dim,
        "images-extracted": extracted,
        "images-from-cache": from_cache,
        "seconds-extracting": time.monotonic() - start,
    })
    return Message(RecordDict({"info": reply}), reply_to=msg)


def _client(context: Context, msg: Message):
    config, clients, splits = _clients(context, _held_out(msg))
    name = msg.content["config"]["client"]
    found = [c for c in clients if c[0] == name]
    if not found:
        raise ValueError(f"this silo holds no client {name!r} (it holds "
                         f"{[c[0] for c in clients]})")
    model, store = _store(config, _device(context))
    texts, _ = store.text_features(splits.prompts, config["extract_batch"])
    return config, model, store, texts, found[0]


def _features(store, config, paths, labels):
    feats, _ = store.image_features(paths, config["extract_batch"])
    return feats, np.asarray(labels, dtype=np.uint32)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """The local epochs for the trainer slot `slot` of `slots`, from `arrays` (the plan's
    start, or this client's own adapter), with FedProx's `anchor` and `mu` when sent."""
    config, model, store, texts, (name, _, splits) = _client(context, msg)
    cfg = msg.content["config"]
    slot, slots, round = int(cfg["slot"]), int(cfg["slots"]), int(cfg["round"])
    train_data = _features(store, config, *splits[0][1:])
    # Every slot exists (the batch order is keyed by the slot); only this client's has data.
    empty = (np.zeros((0, model.dim), np.float32), np.zeros(0, np.uint32))
    data = [train_data if k == slot else empty for k in range(slots)]
    if model.logit_scale is None:
        raise ValueError(f"{config['model']}: no `logit_scale` tensor (the loss needs "
                         "CLIP's temperature)")
    text = dumps(config)
    clients = fedclip.Clients(text, texts, model.logit_scale, data, _device(context))
    if config["keep_optimizer_state"] and "optimizer" in context.state:
        saved = context.state["optimizer"]
        clients.set_optimizer_state(saved["m"].numpy(), saved["v"].numpy(),
                                    [int(s) for s in saved["steps"].numpy()])
    start = from_record(msg.content["arrays"])
    anchor = from_record(msg.content["anchor"]) if "anchor" in msg.content else None
    plan = fedclip.RoundPlan([slot], start, anchor, float(cfg["mu"]))
    losses = clients.local_update(round, plan)[slot]
    if config["keep_optimizer_state"]:
        m, v, steps = clients.optimizer_state()
        context.state["optimizer"] = ArrayRecord({
            "m": Array(m), "v": Array(v), "steps": Array(np.asarray(steps, np.uint64))})
    params = clients.get_parameters()[slot]
    content = RecordDict({
        "arrays": to_record(params, model.dim),
        "losses": ArrayRecord({"losses": Array(np.asarray(losses, np.float32))}),
        "metrics": MetricRecord({"num-examples": len(train_data[1])}),
    })
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy and size of each of the client's non-empty splits with the sent adapter
    (none sent: zero-shot)."""
    config, model, store, texts, (_, _, splits) = _client(context, msg)
    params = from_record(msg.content["arrays"]) if "arrays" in msg.content else None
    data = [(split, *_features(store, config, paths, labels)) for split, paths, labels in splits]
    scored = fedclip.evaluate_splits(texts, data, params)
    reply = ConfigRecord({
        "splits": [s for s, _, _ in scored] or [""],
        "accuracy": [a for _, a, _ in scored] or [0.0],
        "samples": [n for _, _, n in scored] or [0],
        "rows": len(scored),
    })
    return Message(RecordDict({"scores": reply}), reply_to=msg)
