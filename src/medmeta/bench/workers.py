"""The local engine: benchmark jobs in child processes of this one (``medmeta benchmark --workers N``).

Each worker is a fresh ("spawn") Python process: it sets ``train.threads`` (default 1) torch threads,
loads the domains once (the same deterministic `load_domains` call as the parent) and runs whole jobs
with a `JobRunner`, a training with all of its cells or a reference. Workers write checkpoints into the
job's own folder but never ``results.jsonl``: every message goes to the parent through the worker's own
pipe (no lock or semaphore is shared, so a run killed with its whole process group leaves nothing behind
in ``/dev/shm``), and the parent appends records to the `ResultsStore` (`medmeta.bench.executor`).
On any exit of the parent loop (done, an error, Ctrl-C, SIGTERM) the workers are terminated; a worker
whose parent died (SIGKILL) exits within a second. A worker that dies stops the run (usually out of
memory: rerunning on the same machine would die again); rerunning the command resumes it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from medmeta.bench.cells import Job
from medmeta.bench.jobs import Finished
from medmeta.bench.protocol import Protocol
from medmeta.bench.runner import JobRunner, Message, portable, prepare_process
from medmeta.errors import TrainingError


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
    """A worker: load the domains, then run each task ``(index, job, finished)`` the parent sends,
    until it sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    _exit_with_parent()
    prepare_process(threads)
    runner = JobRunner(protocol, root, out)
    try:
        runner.domains()
        while (task := conn.recv()) is not None:
            index, job, finished = task
            runner.run(index, job, finished, conn.send)
    except BaseException as exc:
        conn.send(("error", None, portable(exc)))
    finally:
        conn.close()


class LocalPool:
    """`workers` child processes, each running one job at a time (an `Engine`)."""

    retries = 0

    def __init__(
        self, protocol: Protocol, root: str | Path | None, out: Path, *, threads: int, workers: int
    ) -> None:
        self.protocol, self.root, self.out, self.threads, self.workers = protocol, root, out, threads, workers
        self._processes: list[mp.process.BaseProcess] = []
        self._conns: dict[Connection, mp.process.BaseProcess] = {}
        self._busy: dict[Connection, int] = {}
        self._parents: list[Connection] = []

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        pipes = [ctx.Pipe(duplex=True) for _ in range(self.workers)]
        self._parents = [parent for parent, _ in pipes]
        self._processes = [
            ctx.Process(
                target=worker_main,
                args=(self.protocol, self.root, self.out, self.threads, child),
                name=f"medmeta-bench-worker-{w}",
                daemon=True,
            )
            for w, (_, child) in enumerate(pipes)
        ]
        self._conns = dict(zip(self._parents, self._processes, strict=True))
        old_int = _ignore_sigint()  # the workers inherit it: Ctrl-C is the parent's to handle
        try:
            for p in self._processes:
                p.start()
        finally:
            _restore_sigint(old_int)
        for _, child in pipes:
            child.close()  # the worker holds it now: its death reads as end of file here

    def free_slots(self) -> int:
        return len(self._conns) - len(self._busy)

    def submit(self, index: int, job: Job, finished: Finished) -> None:
        conn = next(c for c in self._conns if c not in self._busy)
        self._busy[conn] = index
        conn.send((index, job, finished))

    def poll(self, timeout: float) -> list[Message]:
        if not self._conns:
            raise TrainingError(
                "every benchmark worker exited before its jobs were done: rerun the same command to resume"
            )
        messages: list[Message] = []
        for conn in wait(list(self._conns), timeout=timeout):
            assert isinstance(conn, Connection)
            try:
                message: Message = conn.recv()
            except EOFError:
                process = self._conns.pop(conn)
                self._busy.pop(conn, None)
                process.join(5.0)
                _check_alive([process])
                continue
            if message[0] in ("done", "error"):
                self._busy.pop(conn, None)
            messages.append(message)
        return messages

    def close(self) -> None:
        for p in self._processes:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + 5.0
        for p in self._processes:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        for c in self._parents:
            c.close()


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
