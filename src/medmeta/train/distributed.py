"""Where this process stands in a `torchrun` job: rank, world size, backend, and its share of a meta-batch.

`torchrun` (``torch.distributed.run``) starts one process per rank and tells each its place through the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); `from_env`
reads it, `process_group` joins the job (gloo on CPU, NCCL on CUDA: the backend follows the device) and
leaves it, and `task_shard` gives each rank a contiguous block of the meta-batch's task positions.
Episodes are drawn from ``(seed, global episode index)`` (`medmeta.tasks.base.SeededSampler`), so which
tasks a rank meta-trains is a function of the global seed and index, never of the rank's own state.

Joining a process group is process-wide state: only the command line (`medmeta.cli.main`) calls
`process_group`; the library receives a `Distributed` and never reads the environment itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from medmeta.errors import ConfigError

#: The variables torchrun sets for every worker; a job needs all of them.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Distributed:
    """One rank of a job of `world_size` processes.

    Attributes:
        rank: this process's global rank, ``0 .. world_size - 1``; rank 0 writes checkpoints and prints.
        world_size: processes in the job (at least 2: one process is not a distributed run).
        local_rank: rank on this machine (selects the GPU, ``cuda:local_rank``).

    Example:
        >>> Distributed(rank=1, world_size=2, local_rank=1).is_main
        False
    """

    rank: int
    world_size: int
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 2 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ConfigError(
                f"rank {self.rank} of world size {self.world_size} (local rank {self.local_rank}) is not a "
                "distributed run: launch it with torchrun --nproc-per-node N (N >= 2)"
            )

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes the run folder and prints progress and results."""
        return self.rank == 0


def _integer(environ: Mapping[str, str], name: str) -> int:
    text = environ[name]
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={text!r} is not an integer: launch the run with torchrun, which "
            "sets it"
        ) from None


def from_env(environ: Mapping[str, str] | None = None) -> Distributed | None:
    """This process's place in a torchrun job, or None outside one (or in a job of one process).

    Args:
        environ: the environment to read (default ``os.environ``).

    Raises:
        ConfigError: ``WORLD_SIZE`` above 1 without the other torchrun variables, or a non-integer one.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or _integer(env, "WORLD_SIZE") <= 1:
        return None
    missing = [name for name in TORCHRUN_VARIABLES if not env.get(name)]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={env['WORLD_SIZE']} but {', '.join(missing)} not set: launch distributed training "
            "with torchrun (e.g. torchrun --nproc-per-node 2 -m medmeta.cli.main train ...), which sets "
            "them all"
        )
    return Distributed(
        rank=_integer(env, "RANK"),
        world_size=_integer(env, "WORLD_SIZE"),
        local_rank=_integer(env, "LOCAL_RANK"),
    )


def backend_for(device: torch.device) -> str:
    """``nccl`` for CUDA tensors, ``gloo`` for CPU ones: the collectives run where the gradients live."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextmanager
def process_group(run: Distributed, device: torch.device) -> Iterator[torch.device]:
    """Join the job's process group for the duration of the block (torchrun's ``env://`` rendezvous).

    On CUDA, the rank's GPU is ``cuda:local_rank`` and becomes the current device, so ``cuda`` in the
    config means this rank's own GPU.

    Yields:
        The device this rank computes on.

    Raises:
        ConfigError: CUDA asked for but this machine has fewer GPUs than ranks on it.
    """
    if device.type == "cuda":
        if run.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {run.local_rank} needs GPU {run.local_rank} but this machine has "
                f"{torch.cuda.device_count()}: pass --nproc-per-node {torch.cuda.device_count()} to torchrun"
            )
        device = torch.device("cuda", run.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend_for(device), init_method="env://", rank=run.rank, world_size=run.world_size
    )
    try:
        yield device
    finally:
        dist.destroy_process_group()


def task_shard(meta_batch: int, rank: int, world_size: int) -> range:
    """Positions in a meta-batch of `meta_batch` tasks that rank `rank` of `world_size` meta-trains.

    Contiguous blocks, the first ``meta_batch % world_size`` ranks one task larger: ranks 0 and 1 of
    2 get positions 0-1 and 2-3 of a meta-batch of 4, and 0-1 and 2 of a meta-batch of 3.

    Raises:
        ConfigError: fewer tasks than ranks (a rank would have nothing to meta-train).
    """
    if meta_batch < world_size:
        raise ConfigError(
            f"train.meta_batch={meta_batch} is smaller than the {world_size} processes: each process "
            f"meta-trains at least one task of a meta-batch; set train.meta_batch (--meta-batch) to "
            f"{world_size} or a multiple of it"
        )
    base, extra = divmod(meta_batch, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))
