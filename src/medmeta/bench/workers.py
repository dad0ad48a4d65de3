"""Run benchmark jobs in child processes (``medmeta benchmark --workers N``).

Each worker is a fresh ("spawn") Python process: it sets ``train.threads`` (default 1) torch threads,
loads the domains once (the same deterministic `load_domains` call as the parent) and runs whole jobs,
a training with all of its cells or a reference. Workers write checkpoints into the job's own folder
but never ``results.jsonl``: they send every finished record to the parent (each worker through its
own pipe), which appends it to the `ResultsStore`, so a killed run keeps only complete records and a
rerun redoes what was not reported.
On any exit of the parent loop (done, an error, Ctrl-C, SIGTERM) the workers are terminated; a worker
whose parent died (SIGKILL) exits within a second.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch

from medmeta._accel.allocator import keep_freed_memory
from medmeta.bench.cells import Job
from medmeta.bench.domains import load_domains
from medmeta.bench.jobs import Finished, JobSink, RunProgress, describe, run_job
from medmeta.bench.protocol import Protocol, check_domains
from medmeta.errors import MedmetaError, TrainingError

#: Messages from a worker: (kind, task index or None, payload).
Message = tuple[str, int | None, Any]
_POLL_SECONDS = 0.5


class _PipeSink:
    """A worker's sink: every record and progress step goes to the parent."""

    def __init__(self, conn: Connection, index: int) -> None:
        self.conn, self.index = conn, index

    def record(self, record: dict[str, Any]) -> None:
        self.conn.send(("record", self.index, record))

    def advance(self, units: float) -> None:
        self.conn.send(("advance", self.index, units))


def _portable(exc: BaseException) -> tuple[BaseException | None, str]:
    """The exception itself when it survives pickling, and its traceback text."""
    text = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return None, text
    return exc, text


def _exit_with_parent() -> None:
    """Exit this worker within a second of its parent's death (even a SIGKILL, which skips cleanup)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="medmeta-parent-watch").start()


def worker_main(
    protocol: Protocol, root: str | Path | None, out: Path, threads: int, conn: Connection
) -> None:
    """A worker: load the domains, say ``ready``, then run each task ``(index, job, finished)`` the
    parent sends back, answering ``done``, until it sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    _exit_with_parent()
    keep_freed_memory()
    torch.set_num_threads(threads)
    index: int | None = None
    try:
        domains = load_domains(protocol, check_domains(protocol, root), root)
        conn.send(("ready", None, None))
        while (task := conn.recv()) is not None:
            index, job, finished = task
            conn.send(("start", index, None))
            run_job(protocol, job, domains, finished, out, _PipeSink(conn, index))
            conn.send(("done", index, None))
    except BaseException as exc:
        conn.send(("error", index, _portable(exc)))
    finally:
        conn.close()


@contextmanager
def _parent_signals() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (so the workers are stopped); new workers ignore SIGINT."""
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


def _stop(processes: Sequence[mp.process.BaseProcess], conns: Sequence[Connection]) -> None:
    for p in processes:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5.0
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
    for c in conns:
        c.close()


def _raise_worker_error(job: Job | None, payload: tuple[BaseException | None, str]) -> None:
    exc, text = payload
    if isinstance(exc, MedmetaError):
        exc.add_note(f"raised in a benchmark worker process:\n{text}")
        raise exc
    where = f"job '{job.key}'" if job is not None else "loading the domains"
    raise RuntimeError(f"{where} failed in a benchmark worker process:\n{text}") from exc


def run_in_workers(
    protocol: Protocol,
    root: str | Path | None,
    out: Path,
    tasks: list[tuple[Job, Finished]],
    recorder: JobSink,
    workers: int,
    progress: RunProgress | None,
) -> None:
    """Run `tasks` (each job with what an earlier session finished of it) on `workers` processes.

    Each worker talks to the parent through its own pipe and gets the next task in order when it
    asks for one, so no lock or semaphore is shared: a run killed with its whole process group leaves
    nothing behind in ``/dev/shm``. Records reach `recorder` in the order workers finish them.
    Returns when every job is done.

    Raises:
        MedmetaError: the first one raised in a worker (the run stops).
        TrainingError: a worker process died (killed, out of memory).
        KeyboardInterrupt: Ctrl-C or SIGTERM (the workers are terminated first).
    """
    if not tasks:
        return
    ctx = mp.get_context("spawn")
    n = min(workers, len(tasks))
    threads = protocol.train.threads or 1
    pipes = [ctx.Pipe(duplex=True) for _ in range(n)]
    processes = [
        ctx.Process(
            target=worker_main,
            args=(protocol, root, out, threads, child),
            name=f"medmeta-bench-worker-{w}",
            daemon=True,
        )
        for w, (_, child) in enumerate(pipes)
    ]
    conns = {parent: p for (parent, _), p in zip(pipes, processes, strict=True)}
    running: dict[int, str] = {}
    remaining = set(range(len(tasks)))
    queue = DependencyQueue([job for job, _ in tasks])
    idle: list[Connection] = []

    def serve(conn: Connection) -> None:
        nxt = queue.take()
        if nxt is None and queue.waiting:
            idle.append(conn)  # every job left waits for a running one: ask again when one finishes
            return
        conn.send(None if nxt is None else (nxt, *tasks[nxt]))

    with _parent_signals():
        try:
            old_int = _ignore_sigint()
            try:
                for p in processes:
                    p.start()
            finally:
                _restore_sigint(old_int)
            for _, child in pipes:
                child.close()  # the worker holds it now: its death reads as end of file here
            while remaining:
                if not conns:
                    raise TrainingError(
                        "every benchmark worker exited before its jobs were done: rerun the same command to resume"
                    )
                for conn in wait(list(conns), timeout=_POLL_SECONDS):
                    assert isinstance(conn, Connection)
                    try:
                        kind, index, payload = conn.recv()
                    except EOFError:
                        process = conns.pop(conn)
                        process.join(5.0)
                        _check_alive([process])
                        continue
                    if kind == "record":
                        recorder.record(payload)
                    elif kind == "advance":
                        recorder.advance(payload)
                    elif kind == "start" and index is not None:
                        running[index] = describe(tasks[index][0])
                    elif kind == "error":
                        _raise_worker_error(None if index is None else tasks[index][0], payload)
                    if kind == "done" and index is not None:
                        running.pop(index, None)
                        remaining.discard(index)
                        queue.finished(index)
                        waiting, idle[:] = idle[:], []
                        for other in waiting:
                            serve(other)
                    if kind in ("ready", "done"):
                        serve(conn)
                    if kind in ("start", "done") and progress is not None:
                        progress.job(_running_text(running))
        finally:
            _stop(processes, [parent for parent, _ in pipes])


class DependencyQueue:
    """Jobs in run order, each handed out once the job it `needs` (if pending in this run) has finished."""

    def __init__(self, jobs: Sequence[Job]) -> None:
        keys = {job.key: i for i, job in enumerate(jobs)}
        self._needs = {i: keys.get(getattr(job, "needs", None) or "") for i, job in enumerate(jobs)}
        self._order = list(range(len(jobs)))
        self._done: set[int] = set()

    @property
    def waiting(self) -> bool:
        """True when jobs are left but none can start yet."""
        return bool(self._order)

    def take(self) -> int | None:
        """The first job whose dependency has finished (None: none can start now)."""
        for pos, i in enumerate(self._order):
            need = self._needs[i]
            if need is None or need in self._done:
                del self._order[pos]
                return i
        return None

    def finished(self, index: int) -> None:
        self._done.add(index)


def _running_text(running: dict[int, str]) -> str:
    """One line per running job, in run order."""
    return "\n".join(running[i] for i in sorted(running))


def _check_alive(processes: Sequence[mp.process.BaseProcess]) -> bool:
    """True when every worker has exited cleanly.

    Raises:
        TrainingError: a worker died (killed by a signal, out of memory).
    """
    for p in processes:
        if p.exitcode is not None and p.exitcode != 0:
            raise TrainingError(
                f"benchmark worker {p.name} exited with code {p.exitcode} (killed or out of memory?): "
                "rerun the same command to resume, with fewer --workers if memory is short"
            )
    return all(p.exitcode is not None for p in processes)


def _ignore_sigint() -> Any:
    """Ignore SIGINT while the workers start, so they inherit it (Ctrl-C is the parent's to handle)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.SIG_IGN)


def _restore_sigint(old: Any) -> None:
    if old is not None:
        signal.signal(signal.SIGINT, old)
