"""Run a benchmark: every job in order, skipping what an earlier (killed) run of the same folder finished.

Results are identical whether a run is interrupted or not, whatever the number of workers and wherever
jobs run (see `medmeta.bench.jobs`). With ``workers > 1`` or a cluster executor, whole jobs (a training
and its cells, or a reference) run elsewhere: child processes, Ray actors or Slurm jobs
(`medmeta.bench.executor`), and only this process writes ``results.jsonl``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medmeta.bench.cells import Job, TrainJob, enumerate_cells, enumerate_jobs, job_cost
from medmeta.bench.domains import DomainSplits
from medmeta.bench.executor import ClusterOptions, make_engine, run_jobs
from medmeta.bench.jobs import (
    Finished,
    RunProgress,
    class_counts,
    describe,
    finished_part,
    load_benchmark_domains,
    run_job,
)
from medmeta.bench.protocol import Protocol
from medmeta.bench.store import ResultsStore, check_fingerprint
from medmeta.data.root import data_root
from medmeta.errors import ConfigError
from medmeta.provenance import code_version

logger = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """What `run_benchmark` did in this session (`records`: every record of the folder, in job order)."""

    out: Path
    records: list[dict[str, Any]]
    resumed: bool
    cells_run: int = 0
    cells_skipped: int = 0
    trainings_run: int = 0
    jobs_rerun: int = 0
    seconds: float = 0.0
    test_sources: dict[str, str] = field(default_factory=dict)


class Recorder:
    """The parent's sink: appends records to the store (once per key), counts them, advances the overall bar."""

    def __init__(
        self,
        store: ResultsStore,
        outcome: RunOutcome,
        progress: RunProgress | None,
        on_record: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.store, self.outcome, self.progress, self.on_record = store, outcome, progress, on_record
        self._keys = store.keys()

    def record(self, record: dict[str, Any]) -> None:
        if record["key"] in self._keys:  # a job run again after its worker was lost: counted once
            logger.warning("dropping a second record of %s", record["key"])
            return
        self._keys.add(record["key"])
        self.store.append(record)
        if record["kind"] == "train":
            self.outcome.trainings_run += 1
        elif record["kind"] == "cell":
            self.outcome.cells_run += 1
            if self.on_record is not None:
                self.on_record(record)

    def advance(self, units: float) -> None:
        if self.progress is not None:
            self.progress.job_done(units)

    def finished(self, job: Job) -> Finished:
        """What the store holds of `job` now."""
        return finished_part(job, self.store)


def run_benchmark(
    protocol: Protocol,
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    progress: RunProgress | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    workers: int = 1,
    domains: dict[str, DomainSplits] | None = None,
    executor: ClusterOptions | None = None,
) -> RunOutcome:
    """Run (or resume) every job of `protocol` in `out`; results go to ``OUT/results.jsonl``.

    Args:
        protocol: the benchmark.
        out: run folder; a folder holding an earlier run of the same protocol is resumed.
        data_dir: data root (default: ``protocol.data.data_dir``, else ``$MEDMETA_DATA``).
        progress: receives overall and per-phase progress (with workers: overall progress and the
            running jobs only).
        on_record: called after each cell record is written (tests use it to interrupt a run).
        workers: jobs run at once, each in its own process with ``train.threads`` (default 1) torch
            threads; 1 runs every job in this process (without `executor`).
        domains: the protocol's domains already loaded with `load_benchmark_domains` (default: loaded here).
        executor: run the jobs on Ray (`RayOptions`) or Slurm (`SlurmOptions`) instead of child
            processes; paths are made absolute, and the data root and `out` must be at the same paths on
            every node.

    Raises:
        ConfigError: unknown domain, shots too large for a held-out domain, `out` holding another
            protocol's results, or `workers` < 1.
        OptionalDependencyError: `executor` needs ``medmeta[distributed]``.
    """
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}: pass --workers 1 or more")
    start = time.perf_counter()
    code_version()  # the code this process loaded, before anyone edits the sources during a long run
    out = Path(out)
    root = data_dir if data_dir is not None else protocol.data.data_dir
    if domains is None:
        domains = load_benchmark_domains(protocol, root)
    engine = None
    if workers > 1 or executor is not None:  # a missing engine is reported before anything is written
        where = (data_root(root).resolve(), out.resolve()) if executor is not None else (root, out)
        engine = make_engine(executor, protocol, *where, workers)
    resumed = check_fingerprint(out, protocol.fingerprint(), protocol.as_config())
    store = ResultsStore(out)
    outcome = RunOutcome(
        out=out, records=[], resumed=resumed, test_sources={d: s.test_source for d, s in domains.items()}
    )
    jobs = enumerate_jobs(protocol)
    done_keys = store.keys()
    if progress is not None:
        ways = class_counts(domains)
        total = sum(job_cost(protocol, j, ways) for j in jobs)
        finished = sum(job_cost(protocol, j, ways) for j in jobs if _is_done(j, done_keys))
        progress.plan(total, finished)
    pending = []
    for job in jobs:
        if _is_done(job, done_keys):
            outcome.cells_skipped += len(job.cells) if isinstance(job, TrainJob) else 0
        else:
            outcome.cells_skipped += sum(c.key in done_keys for c in getattr(job, "cells", ()))
            pending.append(job)
    recorder = Recorder(store, outcome, progress, on_record)
    if engine is not None:
        outcome.jobs_rerun = run_jobs(engine, pending, recorder, progress)
    else:
        if protocol.train.threads:
            torch.set_num_threads(protocol.train.threads)
        for job in pending:
            if progress is not None:
                progress.job(describe(job))
            run_job(protocol, job, domains, finished_part(job, store), out, recorder, progress)
    outcome.records = in_job_order(store.records, jobs)
    outcome.seconds = time.perf_counter() - start
    return outcome


def in_job_order(records: list[dict[str, Any]], jobs: list[Job]) -> list[dict[str, Any]]:
    """`records` sorted by job (each training before its cells), so nothing built from them depends on
    the order in which workers finished (records of unknown keys go last, in file order)."""
    rank: dict[str, int] = {}
    for job in jobs:
        rank[job.key] = len(rank)
        for c in getattr(job, "cells", ()):
            rank[c.key] = len(rank)
    return sorted(records, key=lambda r: rank.get(r.get("key", ""), len(rank)))


def remaining_work(protocol: Protocol, out: Path, ways: dict[str, int]) -> tuple[int, float]:
    """``(cells finished in run folder `out`, rough cost of the jobs not finished)``; reads only."""
    keys = ResultsStore(out, repair=False).keys()
    done = sum(c.key in keys for c in enumerate_cells(protocol))
    return done, sum(job_cost(protocol, j, ways) for j in enumerate_jobs(protocol) if not _is_done(j, keys))


def _is_done(job: Job, keys: set[str]) -> bool:
    if not isinstance(job, TrainJob):
        return job.key in keys
    return all(c.key in keys for c in job.cells)
