"""One parent loop for every executor of benchmark jobs: local processes, Ray actors or Slurm jobs.

An `Engine` runs jobs somewhere (`medmeta.bench.workers`: child processes of this one;
`medmeta.bench.ray_engine`: Ray actors, on this machine or a cluster; `medmeta.bench.slurm_engine`:
submitit jobs) and hands back the messages of its `JobRunner`s. `run_jobs` is the rest, the same for
all of them: it submits jobs in run order as slots free up (a job that starts from a pretraining waits
for it), appends every record to the parent's `ResultsStore` (a record whose key the store already holds
is dropped, so nothing is counted twice), and reruns a job whose worker was lost (killed, its node gone)
from what the store holds of it, up to the engine's ``retries``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from medmeta.bench.cells import Job
from medmeta.bench.jobs import Finished, RunProgress, describe
from medmeta.bench.protocol import Protocol as BenchProtocol
from medmeta.bench.runner import Message
from medmeta.errors import ConfigError, MedmetaError, TrainingError

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5


@dataclass(frozen=True)
class RayOptions:
    """``--executor ray``: `address` of a running cluster (``auto``, ``ray://HOST:10001``); None starts
    Ray on this machine for the run and stops it afterwards."""

    address: str | None = None


@dataclass(frozen=True)
class SlurmOptions:
    """``--executor slurm``: one Slurm job per benchmark job, submitted with submitit.

    `cluster` is submitit's: ``slurm``, or ``local`` to run the same jobs as processes of this machine.
    `cpus` per job defaults to ``train.threads`` (1 when 0); `time_min` is each job's time limit.
    """

    partition: str | None = None
    time_min: int = 240
    cpus: int | None = None
    mem_gb: float | None = None
    cluster: Literal["slurm", "local"] = "slurm"

    def __post_init__(self) -> None:
        if self.time_min < 1:
            raise ConfigError(f"--slurm-time must be at least 1 minute, got {self.time_min}")
        if self.cpus is not None and self.cpus < 1:
            raise ConfigError(f"--slurm-cpus must be at least 1, got {self.cpus}")


ClusterOptions = RayOptions | SlurmOptions


class Engine(Protocol):
    """Where jobs run. `run_jobs` calls `start`, then `submit` while `free_slots` > 0 and `poll`, and
    always `close`."""

    #: times a job whose worker was lost is run again before the run stops
    retries: int

    def start(self) -> None: ...

    def free_slots(self) -> int: ...

    def submit(self, index: int, job: Job, finished: Finished) -> None: ...

    def poll(self, timeout: float) -> list[Message]:
        """Messages that arrived within `timeout` s; ``("lost", index, reason)`` for a job whose worker
        died before it was done."""
        ...

    def close(self) -> None:
        """Stop what still runs (called on success, errors and Ctrl-C alike)."""
        ...


class JobsSink(Protocol):
    """The parent's side: the results store (through a recorder) and what it holds of a job."""

    def record(self, record: dict[str, object]) -> None: ...

    def advance(self, units: float) -> None: ...

    def finished(self, job: Job) -> Finished: ...


class DependencyQueue:
    """Jobs in run order, each handed out once the job it `needs` (if pending in this run) has finished."""

    def __init__(self, jobs: Sequence[Job]) -> None:
        keys = {job.key: i for i, job in enumerate(jobs)}
        self._needs = {i: keys.get(getattr(job, "needs", None) or "") for i, job in enumerate(jobs)}
        self._order = list(range(len(jobs)))
        self._done: set[int] = set()

    @property
    def waiting(self) -> bool:
        """True when jobs are left to hand out."""
        return bool(self._order)

    def take(self) -> int | None:
        """The first job whose dependency has finished (None: none can start now)."""
        for pos, i in enumerate(self._order):
            need = self._needs[i]
            if need is None or need in self._done:
                del self._order[pos]
                return i
        return None

    def put_back(self, index: int) -> None:
        """Hand `index` out again, before every other job."""
        self._order.insert(0, index)

    def finished(self, index: int) -> None:
        self._done.add(index)


def raise_worker_error(job: Job | None, payload: tuple[BaseException | None, str]) -> None:
    """Re-raise an error a worker reported: a `MedmetaError` as itself (one line for the CLI)."""
    exc, text = payload
    if isinstance(exc, MedmetaError):
        exc.add_note(f"raised in a benchmark worker:\n{text}")
        raise exc
    where = f"job '{job.key}'" if job is not None else "a benchmark worker"
    raise RuntimeError(f"{where} failed in a benchmark worker:\n{text}") from exc


@contextmanager
def parent_signals() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, so that the engine is closed (workers stopped, jobs cancelled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old_term)


def run_jobs(engine: Engine, jobs: Sequence[Job], sink: JobsSink, progress: RunProgress | None) -> int:
    """Run every job of `jobs` on `engine`; records and progress go to `sink`. Returns how many jobs were
    run again after their worker was lost.

    Raises:
        MedmetaError: the first one raised in a worker (the run stops).
        TrainingError: a job's worker was lost more than ``engine.retries`` times.
        KeyboardInterrupt: Ctrl-C or SIGTERM (the engine is closed first).
    """
    if not jobs:
        return 0
    queue = DependencyQueue(jobs)
    remaining = set(range(len(jobs)))
    running: dict[int, str] = {}
    lost: dict[int, int] = {}

    def fill() -> None:
        while engine.free_slots() > 0 and (nxt := queue.take()) is not None:
            engine.submit(nxt, jobs[nxt], sink.finished(jobs[nxt]))

    try:
        engine.start()  # first: Ray installs a SIGTERM handler of its own, which aborts the process
        with parent_signals():
            fill()
            while remaining:
                for kind, index, payload in engine.poll(POLL_SECONDS):
                    if kind == "record":
                        sink.record(payload)
                    elif kind == "advance":
                        sink.advance(payload)
                    elif kind == "error":
                        raise_worker_error(None if index is None else jobs[index], payload)
                    elif kind == "lost" and index is not None:
                        _retry_or_stop(engine, jobs[index], lost, index, payload)
                        running.pop(index, None)
                        queue.put_back(index)
                    elif kind == "start" and index is not None:
                        running[index] = describe(jobs[index])
                    elif kind == "done" and index is not None:
                        running.pop(index, None)
                        remaining.discard(index)
                        queue.finished(index)
                    if kind in ("start", "done", "lost") and progress is not None:
                        progress.job(running_text(running))
                fill()
    finally:
        engine.close()
    return sum(lost.values())


def _retry_or_stop(engine: Engine, job: Job, lost: dict[int, int], index: int, reason: object) -> None:
    lost[index] = lost.get(index, 0) + 1
    if lost[index] > engine.retries:
        raise TrainingError(
            f"the worker running job '{job.key}' was lost {lost[index]} times ({reason}): "
            "rerun the same command to resume"
        )
    logger.warning("the worker running job %s was lost (%s): running it again", job.key, reason)


def running_text(running: dict[int, str]) -> str:
    """One line per running job, in run order."""
    return "\n".join(running[i] for i in sorted(running))


def make_engine(
    options: ClusterOptions | None, protocol: BenchProtocol, root: str | Path | None, out: Path, workers: int
) -> Engine:
    """The engine for `options` (None: child processes of this one), running `workers` jobs at once, each
    with ``train.threads`` (1 when 0) torch threads."""
    threads = protocol.train.threads or 1
    if options is None:
        from medmeta.bench.workers import LocalPool

        return LocalPool(protocol, root, out, threads=threads, workers=workers)
    if isinstance(options, RayOptions):
        from medmeta.bench.ray_engine import RayEngine

        return RayEngine(options, protocol, root, out, threads=threads, workers=workers)
    from medmeta.bench.slurm_engine import SlurmEngine

    return SlurmEngine(options, protocol, root, out, threads=threads, workers=workers)
