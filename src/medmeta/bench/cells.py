"""The cells of a benchmark and the jobs that fill them, in run order, with a rough cost model.

A cell is one (method, held-out domain, shots, seed) result. Training is per (method, held-out domain,
seed) and shared by that method's cells of every number of shots; the fully-supervised reference is one
job per (held-out domain, seed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from medmeta.bench.protocol import MethodEntry, Protocol

#: Rough seconds per training episode (or mini-batch) and per test episode, Conv4, 28x28, one thread,
#: calibrated on blood_pbc (8-way) held out at 64 px (measured costs scale about with the pixel count).
_COST: dict[str, tuple[float, float]] = {
    "protonet": (0.03, 0.002),
    "matching": (0.03, 0.002),
    "relation": (0.04, 0.003),
    "siamese": (0.04, 0.002),
    "simpleshot": (0.03, 0.002),
    "linear_probe": (0.03, 0.005),
    "baseline_pp": (0.03, 0.005),
    "finetune": (0.03, 0.02),
    "maml": (0.12, 0.24),
    "fomaml": (0.08, 0.24),
    "maml_pp": (0.14, 0.24),
    "meta_sgd": (0.12, 0.24),
    "anil": (0.05, 0.1),
    "reptile": (0.12, 0.23),
}
_DEFAULT_COST = (0.12, 0.24)
#: Rough fixed seconds (28x28) per training (data, feature mean, checkpoints) and per cell (embedding).
_JOB_OVERHEAD, _CELL_OVERHEAD = 1.0, 0.4


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


@dataclass(frozen=True)
class TrainJob:
    """Train `method` with `domain` held out, then evaluate `cells` (one per number of shots)."""

    method: MethodEntry
    domain: str
    seed: int
    cells: tuple[Cell, ...]

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


Job = TrainJob | ReferenceJob


def enumerate_jobs(protocol: Protocol) -> list[Job]:
    """Every job in run order: per seed, per held-out domain, the reference then each method.

    Seed-major, so a long run completes the whole table for its first seed (every method and held-out
    domain) before it starts the next seed: an interrupted run has a usable one-seed table early.
    """
    jobs: list[Job] = []
    for seed in protocol.seeds:
        for domain in protocol.held_out_domains:
            if protocol.reference.enabled:
                jobs.append(ReferenceJob(domain, seed))
            for m in protocol.methods:
                cells = tuple(Cell(m.label, domain, k, seed) for k in protocol.eval.shots)
                jobs.append(TrainJob(m, domain, seed, cells))
    return jobs


def enumerate_cells(protocol: Protocol) -> list[Cell]:
    """Every (method, held-out domain, shots, seed) cell, in run order."""
    return [c for j in enumerate_jobs(protocol) if isinstance(j, TrainJob) for c in j.cells]


def _scale(protocol: Protocol) -> float:
    size = (protocol.data.image_size / 28) ** 2
    return size * (6.0 if protocol.backbone == "resnet12" else 1.0)


def job_cost(protocol: Protocol, job: Job) -> float:
    """Rough seconds of a job on one CPU thread (training plus its test episodes)."""
    if isinstance(job, ReferenceJob):
        r = protocol.reference
        return _scale(protocol) * (_JOB_OVERHEAD + r.epochs * r.steps_per_epoch * 0.05 * r.batch_size / 64)
    train_s, eval_s = _COST.get(job.method.name, _DEFAULT_COST)
    cfg = protocol.train_config(job.method, job.seed)
    training = cfg.epochs * (cfg.episodes_per_epoch + cfg.val_episodes) * train_s
    testing = len(job.cells) * (_CELL_OVERHEAD + protocol.eval.episodes * eval_s)
    return _scale(protocol) * (_JOB_OVERHEAD + training + testing)


def cell_cost(protocol: Protocol, job: TrainJob) -> float:
    """Rough seconds of evaluating one cell of `job` (the rest of `job_cost` is training)."""
    return _scale(protocol) * (
        _CELL_OVERHEAD + protocol.eval.episodes * _COST.get(job.method.name, _DEFAULT_COST)[1]
    )


def safe_name(text: str) -> str:
    """A file-name-safe version of a method label or domain entry."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "_"
