"""What server and sites say to each other, and the server's loop, independent of the transport.

A *job* is one federated strategy's run as JSON-ready data: the config, the learner, FedProx's ``mu``,
the norm layer, DP settings and, once known, ``n_way``. The server (`serve`) asks every site for its
size (``query``), builds the initial model (weights only: it holds no data), then for each round sends
the global weights to every site (``train``) and averages what comes back (`weighted_mean`); at the end
every site tests the final weights on its own held-out images (``evaluate``) and sends back only its
per-episode accuracies. The site side (`site_reply`) is the only code that opens images.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from medmeta.config.federated import FederatedConfig, Learner
from medmeta.errors import MedmetaError
from medmeta.federated.evaluation import site_accuracy
from medmeta.federated.learners import build_model, local_round, make_source
from medmeta.federated.params import Arrays, get_arrays, set_arrays, weighted_mean
from medmeta.federated.sites import Site, site_seed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One federated strategy's run.

    Attributes:
        strategy: the row label (``fedavg``, ``fedavg+dp``...).
        learner: the local learner.
        mu: FedProx's proximal weight (None: none).
        norm: ``batch`` or ``group`` (DP runs).
        dp: ``noise_multiplier``, ``max_grad_norm``, ``delta`` per site name (None: no DP).
        config: the run's `FederatedConfig` as JSON data.
        n_way: head rows, the most classes of any site (set by the server once the sites answered).
    """

    strategy: str
    learner: Learner
    mu: float | None
    norm: str
    dp: dict[str, dict[str, float]] | None
    config: dict[str, Any]
    n_way: int = 0

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Job:
        return cls(**json.loads(text))

    @property
    def cfg(self) -> FederatedConfig:
        return FederatedConfig.model_validate(self.config)


@dataclass(frozen=True)
class Reply:
    """A site's answer: its node, arrays (``train``) and metrics (JSON-ready)."""

    node: int
    arrays: Arrays | None
    metrics: dict[str, Any]


class Exchange(Protocol):
    """The transport the server uses (Flower's grid, in `medmeta.federated.flower_apps`)."""

    def nodes(self, count: int) -> list[int]:
        """Wait until `count` sites are connected; their node ids."""
        ...

    def send(
        self, kind: str, nodes: Sequence[int], arrays: Arrays | None, job: Job, round_index: int
    ) -> list[Reply]:
        """Send ``query``/``train``/``evaluate`` to every node; one reply per node (an error raises)."""
        ...


def serve(job: Job, exchange: Exchange) -> dict[str, Any]:
    """The server's whole run for one strategy; returns the per-site results (no image is ever read).

    Returns:
        ``{"strategy", "n_way", "history": [{round, loss}], "sites": {name: {n_classes, n_train,
        accuracy: {K: [per-episode]}, epsilon?}}}``.
    """
    cfg = job.cfg
    nodes = exchange.nodes(len(cfg.data.sites))
    infos = {r.node: r.metrics for r in exchange.send("query", nodes, None, job, -1)}
    n_way = max(int(i["n_classes"]) for i in infos.values())
    job = dataclasses.replace(job, n_way=n_way)
    model = build_model(job.learner, cfg, n_way=n_way, seed=cfg.train.seed, norm=job.norm)
    arrays = get_arrays(model)
    history = []
    for r in range(cfg.train.rounds):
        replies = exchange.send("train", nodes, arrays, job, r)
        weights = [
            float(infos[x.node]["n_train"]) if cfg.train.weighting == "examples" else 1.0 for x in replies
        ]
        arrays = weighted_mean([x.arrays for x in replies if x.arrays is not None], weights)
        loss = sum(w * float(x.metrics["loss"]) for w, x in zip(weights, replies, strict=True)) / sum(weights)
        history.append({"round": r + 1, "loss": loss})
        logger.info("%s: round %d/%d, mean local loss %.4f", job.strategy, r + 1, cfg.train.rounds, loss)
    results = exchange.send("evaluate", nodes, arrays, job, cfg.train.rounds)
    sites = {}
    for x in results:
        info = infos[x.node]
        sites[str(info["site"])] = {
            "n_classes": int(info["n_classes"]),
            "n_train": int(info["n_train"]),
            "test_source": info.get("test_source", ""),
            "accuracy": {str(k): v for k, v in x.metrics["accuracy"].items()},
            **({"epsilon": x.metrics["epsilon"]} if "epsilon" in x.metrics else {}),
        }
    return {
        "strategy": job.strategy,
        "learner": job.learner,
        "n_way": n_way,
        "history": history,
        "sites": sites,
    }


def site_reply(kind: str, job: Job, site: Site, arrays: Arrays | None, round_index: int) -> Reply:
    """What a site answers to a message (the node id is filled in by the transport).

    Raises:
        MedmetaError: an unknown message kind, or a site not in the job's config.
    """
    cfg = job.cfg
    if site.name not in cfg.data.sites:
        raise MedmetaError(
            f"site '{site.name}' is not among the run's sites {cfg.data.sites}: check --node-config"
        )
    if kind == "query":
        return Reply(
            -1,
            None,
            {
                "site": site.name,
                "n_classes": site.n_classes,
                "n_train": len(site.train),
                "test_source": site.test_source,
            },
        )
    model = build_model(job.learner, cfg, n_way=job.n_way, seed=cfg.train.seed, norm=job.norm)
    if arrays is None:
        raise MedmetaError(f"a '{kind}' message without weights: the server and site versions differ")
    set_arrays(model, arrays)
    index = cfg.data.sites.index(site.name)
    privacy = None
    if job.dp is not None:
        from medmeta.federated.dp import DPSGD

        d = job.dp[site.name]
        privacy = DPSGD(
            site.train,
            d["noise_multiplier"],
            d["max_grad_norm"],
            cfg.train.batch_size,
            site_seed(cfg.train.seed, index),
        )
    if kind == "train":
        source = make_source(job.learner, model, [site.train], cfg, seed=site_seed(cfg.train.seed, index))
        loss = local_round(model, source, cfg, round_index, mu=job.mu, privacy=privacy)
        return Reply(-1, get_arrays(model), {"loss": loss})
    if kind == "evaluate":
        acc = site_accuracy(model, site, cfg.eval)
        metrics: dict[str, Any] = {"accuracy": {str(k): v for k, v in acc.items()}}
        if job.dp is not None:
            from medmeta.federated.dp import spent_epsilon

            d = job.dp[site.name]
            steps = cfg.train.rounds * cfg.train.local_steps
            rate = min(1.0, cfg.train.batch_size / len(site.train))
            metrics["epsilon"] = spent_epsilon(d["noise_multiplier"], rate, steps, d["delta"])
        return Reply(-1, None, metrics)
    raise MedmetaError(f"unknown message kind '{kind}': expected query, train or evaluate")
