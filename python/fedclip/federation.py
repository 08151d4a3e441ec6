"""`fedclip run`'s round loop written over the Python seams: the reference for anyone
driving the strategies themselves (a notebook, the Flower app in flower/).

Per round: the sampled trainer slots (`Splits.sample_round`), the strategy's plan
(`Strategy.configure_train`), the clients' local epochs (`Clients.local_update`), the
server's aggregate (`Strategy.aggregate_train`). Evaluation, checkpoints and reports are
left to the caller.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

import numpy as np

from ._fedclip import Clients, FeatureStore, Model, Splits, Strategy


def client_features(
    store: FeatureStore, splits: Splits, batch: int = 64
) -> Tuple[List[Tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Each training client's `(features [N, D], labels [N])` and the class text features,
    through the feature cache (the run's files, so the run's values)."""
    clients = splits.clients
    train = []
    for c in splits.training_clients():
        paths, labels = clients[c].train
        feats, _ = store.image_features(paths, batch)
        train.append((feats, np.asarray(labels, dtype=np.uint32)))
    texts, _ = store.text_features(splits.prompts, batch)
    return train, texts


def rounds(
    config: Dict[str, Any], model: Model, store: FeatureStore, device: str = "auto"
) -> Tuple[np.ndarray, np.ndarray, List[List[List[float]]]]:
    """Trains `config["rounds"]` rounds of `config` (a `fedclip.run_config` dict). Returns
    the final global parameters `[P]`, every client's `[K, P]` and each round's losses."""
    text = json.dumps(config)
    splits = Splits(text)
    train, texts = client_features(store, splits, config["extract_batch"])
    if model.logit_scale is None:
        raise ValueError(f"{model.path}: no `logit_scale` tensor (the loss needs CLIP's temperature)")
    clients = Clients(text, texts, model.logit_scale, train, device)
    strategy = Strategy(text)
    glob = clients.initial_parameters
    losses: List[List[List[float]]] = []
    for round in range(strategy.rounds(config["rounds"])):
        sampled = splits.sample_round(config["sample_fraction"], round)
        plan = strategy.configure_train(round, sampled, glob)
        if plan is None:
            losses.append([])
            continue
        losses.append(clients.local_update(round, plan))
        new = strategy.aggregate_train(
            round, glob, clients.get_parameters(), plan.slots, clients.train_sizes
        )
        if new is not None:
            glob = new
    return glob, clients.get_parameters(), losses
