"""The Ray engine (``medmeta benchmark --executor ray``): benchmark jobs on Ray actors.

`workers` actors, each holding a `JobRunner` (the domains loaded once per actor) and reserving
``train.threads`` CPUs, on a Ray instance started for the run on this machine or on a running cluster
(``--ray-address auto`` on a cluster node, ``ray://HEAD:10001`` from elsewhere). Each job is one call of
a streaming-generator method, so its records reach the parent as they are made; only the parent writes
``results.jsonl``. An actor whose process or node died is replaced by a new one, and
`medmeta.bench.executor` runs the job it held again, from what the results store holds of it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medmeta._optional import optional_import
from medmeta.bench.cells import Job
from medmeta.bench.executor import RayOptions
from medmeta.bench.jobs import Finished
from medmeta.bench.protocol import Protocol
from medmeta.bench.runner import JobRunner, Message, prepare_process
from medmeta.errors import ConfigError

#: a local Ray instance's shared-memory object store: messages are small, the domains are never in it
_OBJECT_STORE_BYTES = 256 * 1024**2


class RayJobRunner:
    """A Ray actor's state: one `JobRunner` in the actor's own process."""

    def __init__(self, protocol: Protocol, root: str | None, out: str, threads: int) -> None:
        prepare_process(threads)
        self.runner = JobRunner(protocol, root, Path(out))

    def run(self, index: int, job: Job, finished: Finished) -> Iterator[Message]:
        """Run one job, yielding its messages as they are made (a Ray streaming generator)."""
        messages: queue.Queue[Message] = queue.Queue()
        worker = threading.Thread(
            target=self.runner.run, args=(index, job, finished, messages.put), name="medmeta-job"
        )
        worker.start()
        while True:
            message = messages.get()
            yield message
            if message[0] in ("done", "error"):
                break
        worker.join()


class RayEngine:
    """`workers` Ray actors, each running one job at a time (an `Engine`)."""

    retries = 2

    def __init__(
        self,
        options: RayOptions,
        protocol: Protocol,
        root: str | Path | None,
        out: Path,
        *,
        threads: int,
        workers: int,
    ) -> None:
        self.ray: Any = optional_import("ray", "--executor ray")
        self.options, self.protocol, self.threads, self.workers = options, protocol, threads, workers
        self.root = None if root is None else str(root)
        self.out = str(out)
        self._owns_ray = False
        self._actor_class: Any = None
        self._actors: list[Any] = []
        self._idle: list[int] = []
        self._streams: dict[Any, tuple[int, int]] = {}  # generator -> (job index, actor)

    def start(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            local = self.options.address is None
            try:
                ray.init(
                    address=self.options.address,
                    num_cpus=self.workers * self.threads if local else None,
                    object_store_memory=_OBJECT_STORE_BYTES if local else None,
                    include_dashboard=False if local else None,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
            except ConnectionError as exc:
                raise ConfigError(
                    f"cannot reach a Ray cluster at --ray-address {self.options.address} ({exc}): start one "
                    "with `ray start --head` or leave --ray-address out to start Ray on this machine"
                ) from None
            self._owns_ray = True
        self._actor_class = ray.remote(RayJobRunner).options(num_cpus=self.threads, max_restarts=0)
        self._actors = [self._new_actor() for _ in range(self.workers)]
        self._idle = list(range(self.workers))

    def _new_actor(self) -> Any:
        """An actor; calls made while it starts wait for it (a restarting one would refuse them)."""
        return self._actor_class.remote(self.protocol, self.root, self.out, self.threads)

    def free_slots(self) -> int:
        return len(self._idle)

    def submit(self, index: int, job: Job, finished: Finished) -> None:
        actor = self._idle.pop(0)
        stream = self._actors[actor].run.options(num_returns="streaming").remote(index, job, finished)
        self._streams[stream] = (index, actor)

    def poll(self, timeout: float) -> list[Message]:
        if not self._streams:
            time.sleep(timeout)
            return []
        ready, _ = self.ray.wait(list(self._streams), num_returns=1, timeout=timeout)
        messages: list[Message] = []
        for stream in ready:
            index, actor = self._streams[stream]
            try:
                messages.append(self.ray.get(next(stream)))
            except StopIteration:
                del self._streams[stream]
                self._idle.append(actor)
            except self.ray.exceptions.RayError as exc:  # the actor's process or node died, an object lost
                del self._streams[stream]
                self.ray.kill(self._actors[actor], no_restart=True)
                self._actors[actor] = self._new_actor()
                self._idle.append(actor)
                messages.append(("lost", index, str(exc).splitlines()[0]))
        return messages

    def close(self) -> None:
        for actor in self._actors:
            self.ray.kill(actor, no_restart=True)
        self._actors, self._streams = [], {}
        if self._owns_ray:
            self.ray.shutdown()
