"""The two references of a federated run, trained in one process without Flower.

- *centralised*: every site's training images pooled (what federation would reach if the images could
  move): the same learner, ``rounds * local_steps * n_sites`` steps (as many as all sites take together),
  one optimiser throughout;
- *site-only*: each site alone, ``rounds * local_steps`` steps (as many as it takes in federation), no
  communication.

Both are tested exactly like the federated strategies (`site_accuracy` on each site's held-out images).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from medmeta.config.federated import FederatedConfig, Learner
from medmeta.errors import ConfigError
from medmeta.federated.evaluation import site_accuracy
from medmeta.federated.learners import build_model, make_optimizer, make_source, round_config
from medmeta.federated.sites import Site, site_seed
from medmeta.methods.base import FewShotMethod
from medmeta.train.loop import BatchSource, train_one_epoch


def _train(
    method: FewShotMethod, source: BatchSource, cfg: FederatedConfig, on_round: Callable[[], None] | None
) -> list[dict[str, Any]]:
    """``train.rounds`` passes of `source`'s steps with one optimiser; the per-pass mean loss."""
    optimizer = make_optimizer(cfg, [p for p in method.parameters() if p.requires_grad])
    device = torch.device("cpu")
    history = []
    for r in range(cfg.train.rounds):
        loss = train_one_epoch(
            method,
            source,
            optimizer,
            r,
            round_config(cfg, 0),
            device=device,
            scaler=None,
            scheduler=None,
            progress=None,
        )
        source.after_epoch(method, device)
        history.append({"round": r + 1, "loss": loss})
        if on_round is not None:
            on_round()
    return history


def _site_entry(site: Site, accuracy: dict[int, list[float]]) -> dict[str, Any]:
    return {
        "n_classes": site.n_classes,
        "n_train": len(site.train),
        "test_source": site.test_source,
        "accuracy": {str(k): v for k, v in accuracy.items()},
    }


def centralised(
    learner: Learner, sites: Sequence[Site], cfg: FederatedConfig, on_round: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Train `learner` on every site's training images pooled, test at every site.

    The supervised learner pools into one label space (each site's classes kept apart: a head of
    ``sum(n_classes)`` rows); the meta-learners draw each episode from one site (`MultiDomainSampler`).

    Raises:
        ConfigError: ``per_fedavg``, which is defined by its per-site class order.
    """
    if learner == "per_fedavg":
        raise ConfigError(
            "centralised per_fedavg is not defined (Per-FedAvg is per site): use maml or supervised"
        )
    n_way = sum(s.n_classes for s in sites) if learner == "supervised" else max(s.n_classes for s in sites)
    method = build_model(learner, cfg, n_way=n_way, seed=cfg.train.seed)
    steps = cfg.train.local_steps * len(sites)
    source = make_source(
        learner, method, [s.train for s in sites], cfg, seed=site_seed(cfg.train.seed, 0), steps=steps
    )
    history = _train(method, source, cfg, on_round)
    return {
        "strategy": f"centralised/{learner}",
        "learner": learner,
        "n_way": n_way,
        "history": history,
        "sites": {s.name: _site_entry(s, site_accuracy(method, s, cfg.eval)) for s in sites},
    }


def site_only(
    learner: Learner, sites: Sequence[Site], cfg: FederatedConfig, on_round: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Train `learner` at each site on its own images alone (head of the site's classes), test there."""
    entries, histories = {}, {}
    for i, site in enumerate(sites):
        method = build_model(learner, cfg, n_way=site.n_classes, seed=cfg.train.seed)
        source = make_source(learner, method, [site.train], cfg, seed=site_seed(cfg.train.seed, i))
        histories[site.name] = _train(method, source, cfg, on_round)
        entries[site.name] = _site_entry(site, site_accuracy(method, site, cfg.eval))
    return {"strategy": f"site_only/{learner}", "learner": learner, "history": histories, "sites": entries}
