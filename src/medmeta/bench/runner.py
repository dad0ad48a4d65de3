"""The worker side of every executor: one process that runs benchmark jobs and reports messages.

The local process pool (`medmeta.bench.workers`), Ray actors (`medmeta.bench.ray_engine`) and submitit
jobs (`medmeta.bench.slurm_engine`) all run jobs through a `JobRunner`; they differ only in how its
messages travel to the parent, which alone writes ``results.jsonl`` (`medmeta.bench.executor`).
A message is ``(kind, job index, payload)``: ``start``, ``record`` (a finished record), ``advance``
(cost-model units), ``done``, or ``error`` (the exception, when it survives pickling, and its traceback).
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from medmeta._accel.allocator import keep_freed_memory
from medmeta.bench.cells import Job
from medmeta.bench.domains import DomainSplits, load_domains
from medmeta.bench.jobs import Finished, run_job
from medmeta.bench.protocol import Protocol, check_domains

#: A message from a worker: (kind, job index or None, payload).
Message = tuple[str, int | None, Any]
Emit = Callable[[Message], None]


def portable(exc: BaseException) -> tuple[BaseException | None, str]:
    """The exception itself when it survives pickling, and its traceback text."""
    text = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return None, text
    return exc, text


def prepare_process(threads: int) -> None:
    """Process-wide settings of a worker process (its entry point calls this once)."""
    keep_freed_memory()
    torch.set_num_threads(threads)


class _EmitSink:
    """A `JobSink` that turns records and progress into messages of job `index`."""

    def __init__(self, emit: Emit, index: int) -> None:
        self.emit, self.index = emit, index

    def record(self, record: dict[str, Any]) -> None:
        self.emit(("record", self.index, record))

    def advance(self, units: float) -> None:
        self.emit(("advance", self.index, units))


class JobRunner:
    """Runs jobs of one protocol in this process, loading the domains once (on first use).

    Example:
        >>> runner = JobRunner(protocol, None, Path("runs/bench/quick"))  # doctest: +SKIP
        >>> messages = []
        >>> runner.run(0, job, Finished(), messages.append)  # doctest: +SKIP
        >>> messages[-1]  # doctest: +SKIP
        ('done', 0, None)
    """

    def __init__(self, protocol: Protocol, root: str | Path | None, out: Path) -> None:
        self.protocol, self.root, self.out = protocol, root, out
        self._domains: dict[str, DomainSplits] | None = None

    def domains(self) -> dict[str, DomainSplits]:
        """The protocol's domains (the same deterministic `load_domains` call as the parent's)."""
        if self._domains is None:
            self._domains = load_domains(self.protocol, check_domains(self.protocol, self.root), self.root)
        return self._domains

    def run(self, index: int, job: Job, finished: Finished, emit: Emit) -> None:
        """Run `job` (skipping its `finished` part), emitting ``start``, its records and progress, then
        ``done``; any exception is emitted as ``error`` instead of raised."""
        try:
            domains = self.domains()
            emit(("start", index, None))
            run_job(self.protocol, job, domains, finished, self.out, _EmitSink(emit, index))
        except BaseException as exc:
            emit(("error", index, portable(exc)))
            return
        emit(("done", index, None))


def run_collected(
    protocol: Protocol,
    root: str | Path | None,
    out: Path,
    threads: int,
    index: int,
    job: Job,
    finished: Finished,
) -> list[Message]:
    """Run one job in a fresh process and return its messages (a submitit job's function)."""
    prepare_process(threads)
    messages: list[Message] = []
    JobRunner(protocol, root, out).run(index, job, finished, messages.append)
    return messages
