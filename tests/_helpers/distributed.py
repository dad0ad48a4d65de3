"""Ranks on loopback for the distributed tests: free ports, gloo process groups, one meta-training step.

The step is the training loop's own (`medmeta.train.loop.train_one_epoch` does the same calls):
``source.shard`` -> ``sync.snapshot`` -> ``source.loss`` -> ``sync.merge`` -> ``backward`` ->
``sync.gradients``. Each rank saves what it ends with (gradients, buffers, loss) as safetensors.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from medmeta.config import TrainConfig
from medmeta.data.synthetic import make_synthetic
from medmeta.methods import build_method
from medmeta.models.backbones import Conv4
from medmeta.tasks.sampler import MultiDomainSampler
from medmeta.train.sources import EpisodicBatches
from medmeta.train.sync import RankSync

#: (name, method, options, meta-batch): second-order MAML on even and uneven shards, MAML++ (per-step
#: running statistics, a mean over the tasks), ProtoNet (a metric method) and first-order MAML.
CASES: list[tuple[str, str, dict[str, Any], int]] = [
    ("maml2_even", "maml", {"n_way": 3, "inner_steps": 2, "inner_lr": 0.3}, 4),
    ("maml2_uneven", "maml", {"n_way": 3, "inner_steps": 2, "inner_lr": 0.3}, 3),
    ("maml_pp", "maml_pp", {"n_way": 3, "inner_steps": 2}, 4),
    ("protonet", "protonet", {}, 4),
    ("fomaml", "fomaml", {"n_way": 3, "inner_steps": 1}, 4),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def meta_batch_step(
    name: str, rank: int = 0, world_size: int = 1, *, reduce: bool = True
) -> dict[str, torch.Tensor]:
    """One float64 meta-batch step of case `name` as rank `rank` of `world_size` (1: the whole batch).

    Args:
        reduce: all-reduce across the process group (joined); False: the rank's own part only.

    Returns:
        ``grad.<param>`` (absent: no gradient), ``buffer.<name>`` and ``loss`` (shape (1,)).
    """
    _, method_name, options, meta_batch = next(c for c in CASES if c[0] == name)
    torch.manual_seed(0)
    method = build_method(method_name, Conv4(in_channels=1, hidden=8, image_size=16), options)
    method = method.double().train()
    data = make_synthetic(n_classes=5, n_per_class=12, image_size=16, channels=1)
    sampler = MultiDomainSampler([data], 3, 2, 3, seed=7)
    cfg = TrainConfig(meta_batch=meta_batch, episodes_per_epoch=meta_batch)
    source = EpisodicBatches(sampler, cfg, prepare=lambda x: x.double() / 255)
    share = 1.0
    if world_size > 1:
        source, share = source.shard(rank, world_size)
    sync = RankSync(share, torch.device("cpu")) if world_size > 1 and reduce else None
    batch = source.batch(0, torch.device("cpu"))
    if sync is not None:
        sync.snapshot(method)
    loss = source.loss(method, batch)
    value = float(loss.detach()) if sync is None else sync.merge(loss)
    loss.backward()
    params = [p for p in method.parameters() if p.requires_grad]
    if sync is not None:
        sync.gradients(params)
    out = {f"grad.{n}": p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}
    out.update({f"buffer.{n}": b.detach().clone() for n, b in method.named_buffers()})
    out["loss"] = torch.tensor([value], dtype=torch.float64)
    return out


def _rank_main(rank: int, world_size: int, port: int, folder: str, names: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        for name in names:
            save_file(
                meta_batch_step(name, rank, world_size), os.path.join(folder, f"{name}-{rank}.safetensors")
            )
    finally:
        dist.destroy_process_group()


def sharded_steps(
    folder: Path, names: list[str], world_size: int = 2
) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Run `names` on `world_size` gloo ranks (spawned processes); each case's per-rank results."""
    torch.multiprocessing.spawn(
        _rank_main, args=(world_size, free_port(), str(folder), names), nprocs=world_size, join=True
    )
    return {n: [load_file(str(folder / f"{n}-{r}.safetensors")) for r in range(world_size)] for n in names}


def torchrun(*args: str, nproc: int) -> list[str]:
    """``torchrun`` on loopback with `nproc` processes of one thread each, then `args` (a ``-m`` module...)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        *args,
    ]
