"""One silo: its own data folder (`data` in the node config: one or more domain folders) and
its own feature cache (`cache-dir`). It answers three messages:

* `query`, step `domains`: its domains; step `clients`: its domains, classes and clients
  under the server's held-out domains, after extracting every file once (first contact; the cache
  answers later messages); step `layout`: the method family's tensors, layout and round-0
  global parameters; step `finetune`: a client's test accuracy after `finetune-local-steps`
  from the global parameters sent;
* `train`: the local epochs of `fedclip run` for one trainer slot, from the parameters sent
  (none sent: the slot's own start, e.g. Tip-Adapter's cache of its own data);
* `evaluate`: the accuracy of the parameters sent (`deploy` `zeroshot`: none; `own`: the
  client's own start) on each of its splits.

Nothing leaves the silo but parameters, losses, counts and accuracies."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Tuple

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import fedclip

from .common import (dumps, from_record, options, tensors_to_config, to_record)

app = ClientApp()


def _config(context: Context, test_domains: List[str]) -> Dict[str, Any]:
    return options(context.run_config, context.node_config, test_domains)


def _own_test_domains(context: Context, held_out: List[str]) -> List[str]:
    data = options(context.run_config, context.node_config)["data"]
    return [d for d in fedclip.domains(data) if d in held_out]


def _clients(context: Context, msg: Message, store: fedclip.FeatureStore):
    """This silo's settings, its clients as `(name, held_out, splits)`, `splits` being
    `[(split, paths, labels)]`, the `fedclip.Splits`, and the images left out: as `fedclip
    run`, every image the cache lacks is decoded first, and a bad one is an error naming
    every one, or with `skip-bad` left out. A silo of held-out domains only scores every
    file, as `fedclip run`'s held-out clients do."""
    own = _own_test_domains(context, _held_out(msg))
    every = fedclip.domains(options(context.run_config, context.node_config)["data"])
    all_held_out = len(own) == len(every)
    config = _config(context, [] if all_held_out else own)
    split_config = dict(config)
    if all_held_out:
        # A held-out domain is one client, named after it, scoring every file.
        split_config["clients_per_domain"] = 1
    federation = list(msg.content["config"].get("federation-domains", [])) or None
    splits = fedclip.Splits(dumps(split_config), federation)
    skipped = splits.check_images(store)
    clients = []
    for c in splits.clients:
        if all_held_out:
            clients.append((c.name, True, [("test", *c.files)]))
        else:
            clients.append((c.name, c.held_out, [("train", *c.train), ("val", *c.val),
                                                 ("test", *c.test)]))
    return config, clients, splits, skipped


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
    if step == "layout":
        return _layout(msg, context)
    if step == "finetune":
        return _finetune(msg, context)
    model, store = _store(_config(context, []), _device(context))
    config, clients, splits, skipped = _clients(context, msg, store)
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
        "skipped-images": skipped or [""],
        "skipped-count": len(skipped),
    })
    return Message(RecordDict({"info": reply}), reply_to=msg)


def _client(context: Context, msg: Message):
    model, store = _store(_config(context, []), _device(context))
    config, clients, splits, _ = _clients(context, msg, store)
    name = msg.content["config"]["client"]
    found = [c for c in clients if c[0] == name]
    if not found:
        raise ValueError(f"this silo holds no client {name!r} (it holds "
                         f"{[c[0] for c in clients]})")
    texts, _ = store.text_features(splits.prompts, config["extract_batch"])
    return config, model, store, texts, found[0]


def _features(store, config, paths, labels):
    feats, _ = store.image_features(paths, config["extract_batch"])
    return feats, np.asarray(labels, dtype=np.uint32)


def _trainer(context, msg, config, model, texts, data, slots=1, slot=0):
    """The method family's trainer for `slots` slots, `data` (this client's train split) in
    `slot`, the others empty (the batch order is keyed by the slot), with the federation's
    Tip-Adapter cache capacity."""
    if model.logit_scale is None:
        raise ValueError(f"{config['model']}: no `logit_scale` tensor (the loss needs "
                         "CLIP's temperature)")
    empty = (np.zeros((0, model.dim), np.float32), np.zeros(0, np.uint32))
    train = [data if k == slot else empty for k in range(slots)]
    capacity = int(msg.content["config"].get("cache-capacity", 0)) or None
    return fedclip.Clients(dumps(config), texts, model.logit_scale, train, _device(context),
                           cache_capacity=capacity)


def _train_data(store, config, model, splits):
    """The client's train split (a held-out client has none)."""
    if splits[0][0] != "train":
        return np.zeros((0, model.dim), np.float32), np.zeros(0, np.uint32)
    return _features(store, config, *splits[0][1:])


def _layout(msg: Message, context: Context) -> Message:
    """The family's tensors `(name, shape)`, its layout text and round-0 global parameters,
    for the client named (its trainer gives them)."""
    config, model, store, texts, (_, _, splits) = _client(context, msg)
    clients = _trainer(context, msg, config, model, texts, _train_data(store, config, model, splits))
    info = ConfigRecord({**tensors_to_config(clients.tensors), "layout": clients.layout,
                         "param-count": clients.param_count})
    initial = ArrayRecord({"initial": Array(clients.initial_parameters)})
    return Message(RecordDict({"info": info, "initial": initial}), reply_to=msg)


def _finetune(msg: Message, context: Context) -> Message:
    """`finetune-local-steps`: the client's test accuracy after the run's fine-tuning steps
    from the global parameters sent (`rows` 0: it has no test split)."""
    config, model, store, texts, (_, _, splits) = _client(context, msg)
    cfg = msg.content["config"]
    slot, slots = int(cfg["slot"]), int(cfg["slots"])
    clients = _trainer(context, msg, config, model, texts, _train_data(store, config, model, splits),
                       slots, slot)
    clients.finetune(from_record(msg.content["arrays"], clients.tensors))
    test = [(s, *_features(store, config, paths, labels)) for s, paths, labels in splits
            if s == "test"]
    scored = clients.evaluate(test, clients.get_parameters()[slot])
    reply = ConfigRecord({"accuracy": [a for _, a, _ in scored] or [0.0], "rows": len(scored)})
    return Message(RecordDict({"scores": reply}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """The local epochs for the trainer slot `slot` of `slots`, from `arrays` (the plan's
    start, or this client's own adapter), with FedProx's `anchor` and `mu` when sent."""
    config, model, store, texts, (name, _, splits) = _client(context, msg)
    cfg = msg.content["config"]
    slot, slots, round = int(cfg["slot"]), int(cfg["slots"]), int(cfg["round"])
    train_data = _features(store, config, *splits[0][1:])
    clients = _trainer(context, msg, config, model, texts, train_data, slots, slot)
    tensors = clients.tensors
    if config["keep_optimizer_state"] and "optimizer" in context.state:
        saved = context.state["optimizer"]
        clients.set_optimizer_state(saved["m"].numpy(), saved["v"].numpy(),
                                    [int(s) for s in saved["steps"].numpy()])
    start = (from_record(msg.content["arrays"], tensors) if "arrays" in msg.content
             else clients.get_parameters()[slot])
    anchor = from_record(msg.content["anchor"], tensors) if "anchor" in msg.content else None
    plan = fedclip.RoundPlan([slot], start, anchor, float(cfg["mu"]))
    losses = clients.local_update(round, plan)[slot]
    if config["keep_optimizer_state"]:
        m, v, steps = clients.optimizer_state()
        context.state["optimizer"] = ArrayRecord({
            "m": Array(m), "v": Array(v), "steps": Array(np.asarray(steps, np.uint64))})
    params = clients.get_parameters()[slot]
    content = RecordDict({
        "arrays": to_record(params, tensors),
        "losses": ArrayRecord({"losses": Array(np.asarray(losses, np.float32))}),
        "metrics": MetricRecord({"num-examples": len(train_data[1])}),
    })
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy and size of each of the client's non-empty splits with the parameters sent,
    the client's own start (`deploy` `own`, nothing sent) or zero-shot."""
    config, model, store, texts, (_, _, splits) = _client(context, msg)
    data = [(split, *_features(store, config, paths, labels)) for split, paths, labels in splits]
    clients = _trainer(context, msg, config, model, texts, _train_data(store, config, model, splits))
    deploy = str(msg.content["config"].get("deploy", "zeroshot"))
    if "arrays" in msg.content:
        params = from_record(msg.content["arrays"], clients.tensors)
    elif deploy == "own":
        params = clients.get_parameters()[0]
    else:
        params = None
    scored = clients.evaluate(data, params)
    reply = ConfigRecord({
        "splits": [s for s, _, _ in scored] or [""],
        "accuracy": [a for _, a, _ in scored] or [0.0],
        "samples": [n for _, _, n in scored] or [0],
        "rows": len(scored),
    })
    return Message(RecordDict({"scores": reply}), reply_to=msg)
