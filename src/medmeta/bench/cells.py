"""The cells of a benchmark and the jobs that fill them, in run order, with a rough cost model.

A cell is one (method, held-out domain, shots, seed) result. Training is per (method, held-out domain,
seed) and shared by that method's cells of every number of shots; the fully-supervised reference is one
job per (held-out domain, seed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from medmeta.bench.protocol import MethodEntry, Protocol, RepresentationEntry

#: Rough seconds on one CPU thread, Conv4 at 28x28, measured in ``configs/cross_domain.yaml`` (2026-12-01,
#: a busy 2-core machine): per training episode or pretraining mini-batch (validation included), and per
#: test episode ``n_way * (per_way_shot * shots + per_way)`` (adapting on the support and scoring the
#: queries; the metric methods score cached features, so their cost hardly depends on the shots).
_COST: dict[str, tuple[float, float, float]] = {
    "protonet": (0.08, 0.0, 0.0002),
    "matching": (0.10, 0.00001, 0.0002),
    "relation": (0.11, 0.0, 0.0005),
    "siamese": (0.10, 0.0, 0.0002),
    "simpleshot": (0.10, 0.0, 0.0002),
    "linear_probe": (0.10, 0.0003, 0.001),
    "baseline_pp": (0.15, 0.00003, 0.0006),
    "finetune": (0.12, 0.00004, 0.0005),
    "maml": (0.70, 0.0045, 0.011),
    "fomaml": (0.13, 0.0009, 0.007),
    "maml_pp": (0.67, 0.0043, 0.010),
    "meta_sgd": (0.17, 0.0009, 0.007),
    "anil": (0.12, 0.0004, 0.0054),
    "reptile": (0.43, 0.0047, 0.0107),
}
_DEFAULT_COST = (0.70, 0.0045, 0.011)
#: Rough seconds per supervised-reference step (batch 64) and fixed seconds per training and per cell.
_REFERENCE_STEP, _JOB_OVERHEAD, _CELL_OVERHEAD = 0.1, 1.0, 0.4
#: Rough seconds per image of a self-supervised epoch (two views, Conv4 at 28x28, measured 2026-12-07 with
#: SimCLR: 51 s per epoch of 11,300 images on one thread) and images assumed per pooled domain.
_PRETRAIN_IMAGE, _PRETRAIN_IMAGES_PER_DOMAIN = 0.0045, 3000
#: Classes assumed for a held-out domain whose class count is not given.
_DEFAULT_WAYS = 5


@dataclass(frozen=True)
class Cell:
    """One result of the benchmark."""

    method: str
    domain: str
    shots: int
    seed: int

    @property
    def key(self) -> str:
        return f"cell|{self.method}|{self.domain}|{self.shots}|{self.seed}"


@dataclass(frozen=True, eq=False)
class PretrainJob:
    """Self-supervised pretraining of `representation` on the unlabelled images of `domains`.

    `scope` is the held-out domain it serves, or ``all`` when it serves every held-out domain (setting b,
    where every domain's training images are pooled).
    """

    representation: RepresentationEntry
    scope: str
    domains: tuple[str, ...]
    seed: int

    @property
    def key(self) -> str:
        return f"pretrain|{self.representation.name}|{self.scope}|{self.seed}"


@dataclass(frozen=True, eq=False)
class TrainJob:
    """Train `method` with `domain` held out, then evaluate `cells` (one per number of shots).

    `needs` is the key of the `PretrainJob` whose checkpoint the method starts from (None: none).
    A ``frozen`` method is not trained: its cells evaluate the representation as it is.
    """

    method: MethodEntry
    domain: str
    seed: int
    cells: tuple[Cell, ...]
    needs: str | None = None

    @property
    def key(self) -> str:
        return f"train|{self.method.label}|{self.domain}|{self.seed}"


@dataclass(frozen=True)
class ReferenceJob:
    """Train and test the fully-supervised reference on `domain`."""

    domain: str
    seed: int

    @property
    def key(self) -> str:
        return f"reference|{self.domain}|{self.seed}"


Job = TrainJob | ReferenceJob | PretrainJob


def enumerate_jobs(protocol: Protocol) -> list[Job]:
    """Every job in run order: per seed, per held-out domain, the reference then each method.

    Seed-major, so a long run completes the whole table for its first seed (every method and held-out
    domain) before it starts the next seed: an interrupted run has a usable one-seed table early.
    """
    jobs: list[Job] = []
    for seed in protocol.seeds:
        pretrain = pretrain_jobs(protocol, seed)
        jobs.extend({j.key: j for j in pretrain.values()}.values())
        for domain in protocol.held_out_domains:
            if protocol.reference.enabled:
                jobs.append(ReferenceJob(domain, seed))
            for m in protocol.all_methods:
                cells = tuple(Cell(m.label, domain, k, seed) for k in protocol.eval.shots)
                needs = None if m.representation is None else pretrain[(m.representation, domain)].key
                jobs.append(TrainJob(m, domain, seed, cells, needs))
    return jobs


def pretrain_jobs(protocol: Protocol, seed: int) -> dict[tuple[str, str], PretrainJob]:
    """The pretraining serving each (representation, held-out domain) for `seed`; held-out domains whose
    pools are the same images share one job."""
    jobs: dict[tuple[str, str], PretrainJob] = {}
    everything = tuple(protocol.data.domains)
    for rep in protocol.representations:
        for domain in protocol.held_out_domains:
            pool = tuple(d for d in protocol.data.domains if d in protocol.pretrain_domains(rep, domain))
            scope = "all" if pool == everything else domain
            jobs[(rep.name, domain)] = PretrainJob(rep, scope, pool, seed)
    return jobs


def enumerate_cells(protocol: Protocol) -> list[Cell]:
    """Every (method, held-out domain, shots, seed) cell, in run order."""
    return [c for j in enumerate_jobs(protocol) if isinstance(j, TrainJob) for c in j.cells]


#: A ResNet-12 step against a Conv4 step at the same size: forward + backward of 160 images at 28 px on one
#: thread, 5.6 s against 0.32 s (2026-12-07); a ProtoNet training in cross_domain.yaml took 3,644-5,493 s with
#: ResNet-12 against 180-200 s with Conv4 (the factor 6 used before predicted 7 min for an hour's job).
RESNET12_FACTOR = 18.0


def _scale(protocol: Protocol, backbone: str | None = None) -> float:
    size = (protocol.data.image_size / 28) ** 2
    return size * (RESNET12_FACTOR if (backbone or protocol.backbone) == "resnet12" else 1.0)


def _job_backbone(protocol: Protocol, job: TrainJob | PretrainJob) -> str:
    if isinstance(job, PretrainJob):
        return job.representation.backbone or protocol.backbone
    entry = job.method
    if entry.representation is not None:
        return protocol.representation(entry.representation).backbone or protocol.backbone
    return entry.backbone or protocol.backbone


def job_cost(protocol: Protocol, job: Job, ways: Mapping[str, int] | None = None) -> float:
    """Rough seconds of a job on one CPU thread (training plus its test episodes).

    Args:
        ways: class count of each held-out domain (its test episodes are that many ways); domains not in
            it count as 5-way.
    """
    if isinstance(job, ReferenceJob):
        r = protocol.reference
        few_shot = (
            sum(
                _test_cost(protocol, r.method, job.domain, k, protocol.backbone, ways)
                for k in protocol.eval.shots
            )
            if r.few_shot
            else 0.0
        )
        return few_shot + _scale(protocol) * (
            _JOB_OVERHEAD + r.epochs * r.steps_per_epoch * _REFERENCE_STEP * r.batch_size / 64
        )
    if isinstance(job, PretrainJob):
        rep = job.representation
        epochs = int(rep.train.get("epochs", 10))
        images = rep.max_images or _PRETRAIN_IMAGES_PER_DOMAIN * len(job.domains)
        return _scale(protocol, _job_backbone(protocol, job)) * (
            _JOB_OVERHEAD + epochs * images * _PRETRAIN_IMAGE
        )
    train_s = _COST.get(job.method.name, _DEFAULT_COST)[0]
    cfg = protocol.train_config(job.method, job.seed)
    training = (
        0.0
        if job.method.frozen
        else _scale(protocol, _job_backbone(protocol, job))
        * (_JOB_OVERHEAD + cfg.epochs * cfg.episodes_per_epoch * train_s)
    )
    return training + sum(cell_cost(protocol, job, c.shots, ways) for c in job.cells)


def cell_cost(protocol: Protocol, job: TrainJob, shots: int, ways: Mapping[str, int] | None = None) -> float:
    """Rough seconds of evaluating one `shots`-shot cell of `job` (the rest of `job_cost` is training)."""
    return _test_cost(protocol, job.method.name, job.domain, shots, _job_backbone(protocol, job), ways)


def _test_cost(
    protocol: Protocol, method: str, domain: str, shots: int, backbone: str, ways: Mapping[str, int] | None
) -> float:
    """Rough seconds of `method`'s `shots`-shot test episodes on `domain`."""
    _, per_way_shot, per_way = _COST.get(method, _DEFAULT_COST)
    n_way = (ways or {}).get(domain, _DEFAULT_WAYS)
    episode = n_way * (per_way_shot * shots + per_way)
    return _scale(protocol, backbone) * (_CELL_OVERHEAD + protocol.eval.episodes * episode)


def safe_name(text: str) -> str:
    """A file-name-safe version of a method label or domain entry."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "_"
