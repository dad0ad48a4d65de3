"""The Slurm engine (``medmeta benchmark --executor slurm``): one submitit job per benchmark job.

At most `workers` jobs are queued or running at once, each asking Slurm for ``--slurm-cpus`` CPUs
(default ``train.threads``) for ``--slurm-time`` minutes on ``--slurm-partition``. A job loads the
domains, runs its training and cells with a `JobRunner` and returns their messages, which the parent
appends to ``results.jsonl`` when the job ends; a job that Slurm killed (time limit, preemption, a lost
node) is submitted again from what the results store holds of it. submitit's logs and pickles are in
``OUT/submitit/``. ``--slurm-cluster local`` runs the same jobs as processes of this machine.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from medmeta._optional import optional_import
from medmeta.bench.cells import Job, safe_name
from medmeta.bench.executor import SlurmOptions
from medmeta.bench.jobs import Finished
from medmeta.bench.protocol import Protocol
from medmeta.bench.runner import Message, run_collected
from medmeta.errors import ConfigError

_CHECK_SECONDS = 0.2


class SlurmEngine:
    """At most `workers` submitit jobs at once (an `Engine`)."""

    retries = 2

    def __init__(
        self,
        options: SlurmOptions,
        protocol: Protocol,
        root: str | Path | None,
        out: Path,
        *,
        threads: int,
        workers: int,
    ) -> None:
        self.submitit: Any = optional_import("submitit", "--executor slurm")
        if options.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ConfigError(
                "--executor slurm needs Slurm's sbatch on PATH: run it on a Slurm login node, or pass "
                "--slurm-cluster local to run the same jobs on this machine"
            )
        self.options, self.protocol, self.root, self.out = options, protocol, root, out
        self.threads, self.workers = threads, workers
        self._executor: Any = None
        self._jobs: dict[Any, int] = {}  # submitit job -> benchmark job index

    def start(self) -> None:
        o = self.options
        self._executor = self.submitit.AutoExecutor(folder=self.out / "submitit", cluster=o.cluster)
        params: dict[str, Any] = {
            "name": f"medmeta-bench-{safe_name(self.protocol.name)}",
            "timeout_min": o.time_min,
            "cpus_per_task": o.cpus or self.threads,
            "nodes": 1,
            "tasks_per_node": 1,
        }
        if o.mem_gb is not None:
            params["mem_gb"] = o.mem_gb
        if o.partition is not None:
            params["slurm_partition"] = o.partition
        self._executor.update_parameters(**params)

    def free_slots(self) -> int:
        return self.workers - len(self._jobs)

    def submit(self, index: int, job: Job, finished: Finished) -> None:
        handle = self._executor.submit(
            run_collected, self.protocol, self.root, self.out, self.threads, index, job, finished
        )
        self._jobs[handle] = index

    def poll(self, timeout: float) -> list[Message]:
        deadline = time.monotonic() + timeout
        while True:
            ended = [handle for handle in self._jobs if handle.done()]
            if ended or time.monotonic() >= deadline:
                break
            time.sleep(_CHECK_SECONDS)
        messages: list[Message] = []
        errors = self.submitit.core.utils
        for handle in ended:
            index = self._jobs.pop(handle)
            try:
                messages.extend(handle.result())
            except errors.UncompletedJobError as exc:  # killed, timed out, preempted, node lost
                messages.append(("lost", index, f"submitit job {handle.job_id}: {str(exc).splitlines()[0]}"))
            except errors.FailedJobError as exc:  # the job could not run medmeta (the runner catches errors)
                messages.append(("error", index, (None, str(exc))))
        return messages

    def close(self) -> None:
        for handle in self._jobs:
            if not handle.done():
                handle.cancel(check=False)
        self._jobs = {}
