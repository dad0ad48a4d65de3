"""The collectives of sharded meta-training: what keeps every rank's copy of the run identical.

Each rank meta-trains its block of a meta-batch (`medmeta.train.distributed.task_shard`) and holds the
mean over its own tasks; its `share` is its tasks' fraction of the global meta-batch. Per optimiser step:

- `RankSync.merge` (after the loss): the loss, all-reduced as ``sum_r share_r * loss_r``, so every rank
  logs and NaN-checks the global mean loss.
- `RankSync.gradients` (after ``backward``, before unscaling, clipping and the step): every gradient
  becomes ``sum_r share_r * grad_r``, the mean over the global meta-batch, so every rank takes the same
  step. A parameter without a gradient on every rank keeps none (Adam skips it, as in one process).
  In the same all-reduce, every buffer's change since `RankSync.snapshot` (before the loss) is merged:
  float buffers become ``before + sum_r share_r * (after_r - before)``: exact where a method's statistics
  are a mean over the meta-batch's tasks (MAML++), unchanged where no rank changed them (the MAML family
  never touches running statistics), and the share-weighted mean of the ranks' exponential averages for
  batch norm's running statistics (an approximation: one process would have averaged over all tasks in
  sequence). Integer buffers (``num_batches_tracked``) add up their increments, as one process counts.

Before the first step, `broadcast_state` gives every rank rank 0's weights, buffers, optimiser, scheduler,
scaler and RNG state (its freshly built or resumed run). Tensors of one dtype travel as one flat tensor;
descriptions travel as JSON bytes: nothing is pickled.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _flat_groups(tensors: Sequence[Tensor]) -> dict[torch.dtype, list[int]]:
    groups: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(t.dtype, []).append(i)
    return groups


def _in_place(tensors: Sequence[Tensor], collective: Callable[[Tensor], Any]) -> None:
    """Run `collective` on one flat tensor per dtype and write the results back into `tensors`."""
    for indices in _flat_groups(tensors).values():
        flat = torch.cat([tensors[i].reshape(-1) for i in indices])  # (sum of numels,)
        collective(flat)
        offset = 0
        for i in indices:
            n = tensors[i].numel()
            tensors[i].copy_(flat[offset : offset + n].view_as(tensors[i]))
            offset += n


def all_reduce_sum(tensors: Sequence[Tensor]) -> None:
    """Replace every tensor by its sum over the ranks (in place)."""
    _in_place(tensors, lambda flat: dist.all_reduce(flat, op=dist.ReduceOp.SUM))


def broadcast_from_main(tensors: Sequence[Tensor]) -> None:
    """Replace every tensor by rank 0's (in place)."""
    _in_place(tensors, lambda flat: dist.broadcast(flat, src=0))


def _encode(value: Any, tensors: list[Tensor]) -> Any:
    """JSON for `value`, each tensor replaced by its index in `tensors` (appended), dtype and shape."""
    if isinstance(value, Tensor):
        tensors.append(value.detach())
        return {
            "tensor": len(tensors) - 1,
            "dtype": str(value.dtype).removeprefix("torch."),
            "shape": list(value.shape),
            "cpu": value.device.type == "cpu",
        }
    if isinstance(value, dict):
        return {"items": [[k, _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    return value


def _decode(value: Any, tensors: Sequence[Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "tensor" in value:  # back on the CPU if it was there on rank 0 (Adam's step, the RNG state)
            tensor = tensors[value["tensor"]]
            return tensor.cpu() if value["cpu"] else tensor
        if "tuple" in value:
            return tuple(_decode(v, tensors) for v in value["tuple"])
        return {k: _decode(v, tensors) for k, v in value["items"]}
    return value


def _blank(value: Any, device: torch.device) -> list[Tensor]:
    """Empty tensors for every tensor entry of an encoded description, in index order."""
    found: list[tuple[int, Tensor]] = []

    def visit(v: Any) -> None:
        if isinstance(v, list):
            for x in v:
                visit(x)
        elif isinstance(v, dict) and "tensor" in v:
            found.append(
                (v["tensor"], torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device=device))
            )
        elif isinstance(v, dict):
            for x in v["items"] if "items" in v else v["tuple"]:
                visit(x)

    visit(value)
    return [t for _, t in sorted(found, key=lambda pair: pair[0])]


def broadcast_object(value: Any, device: torch.device) -> Any:
    """Rank 0's `value` (JSON values, tensors, dicts with str or int keys, tuples) on every rank.

    Tensors travel on `device` (the collectives' device: CUDA under NCCL) and arrive where they were on
    rank 0: on the CPU, or on `device`. Everything else travels as JSON.
    """
    tensors: list[Tensor] = []
    main = dist.get_rank() == 0
    encoded = json.dumps(_encode(value, tensors)).encode() if main else b""
    size = torch.tensor([len(encoded)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    data = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)  # (n_bytes,)
    if main:
        data.copy_(torch.frombuffer(bytearray(encoded), dtype=torch.uint8))
    dist.broadcast(data, src=0)
    skeleton = json.loads(data.cpu().numpy().tobytes().decode())
    moved = [t.to(device).clone() for t in tensors] if main else _blank(skeleton, device)
    broadcast_from_main(moved)
    return _decode(skeleton, moved)


def broadcast_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scaler: torch.amp.GradScaler | None,
    epochs_done: int,
    device: torch.device,
) -> int:
    """Give every rank rank 0's training state (fresh or resumed); returns rank 0's `epochs_done`."""
    state = broadcast_object(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "scaler": None if scaler is None else scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "epochs_done": epochs_done,
        },
        device,
    )
    if dist.get_rank() != 0:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None:
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
    return int(state["epochs_done"])


class RankSync:
    """One rank's side of every optimiser step (see the module docstring).

    Args:
        share: this rank's tasks over the global meta-batch (``len(task_shard(...)) / meta_batch``).
        device: where the collectives run (the gradients' device).

    Example:
        >>> sync = RankSync(share=0.5, device=torch.device("cpu"))  # doctest: +SKIP
        >>> sync.snapshot(method); loss = method.batch_loss(my_tasks)  # doctest: +SKIP
        >>> value = sync.merge(loss); loss.backward(); sync.gradients(params)  # doctest: +SKIP
    """

    def __init__(self, share: float, device: torch.device) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"a rank's share of the meta-batch must be in (0, 1], got {share}")
        self.share = share
        self.device = device
        self._buffers: list[Tensor] = []
        self._before: list[Tensor] = []

    def snapshot(self, module: nn.Module) -> None:
        """Remember `module`'s buffers before the step's loss (which may update them)."""
        self._buffers = list(module.buffers())
        self._before = [b.detach().clone() for b in self._buffers]

    def merge(self, loss: Tensor) -> float:
        """The global mean loss, ``sum_r share_r * loss_r`` (every rank gets the same value)."""
        value = loss.detach().reshape(1).to(torch.float64) * self.share  # (1,)
        all_reduce_sum([value])
        return float(value.item())

    def gradients(self, parameters: Sequence[Tensor]) -> None:
        """After ``backward``: every gradient <- ``sum_r share_r * grad_r`` (None where no rank has one),
        and the buffers of the `snapshot` merged (see the module docstring), in one all-reduce per dtype.

        Buffers are merged here, not before ``backward``: a buffer may be saved in the step's graph.
        """
        if len(self._before) != len(self._buffers):
            raise RuntimeError("RankSync.gradients without a snapshot of the module's buffers")
        has = torch.tensor(
            [p.grad is not None for p in parameters], dtype=torch.float32, device=self.device
        )  # (n_params,)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.mul_(self.share) for p in parameters]
        deltas = [
            (b.detach() - s) * (self.share if b.is_floating_point() else 1)
            for b, s in zip(self._buffers, self._before, strict=True)
        ]
        all_reduce_sum([*grads, has, *deltas])
        for p, g, flag in zip(parameters, grads, has.tolist(), strict=True):
            p.grad = g if flag > 0 else None
        with torch.no_grad():
            for b, s, d in zip(self._buffers, self._before, deltas, strict=True):
                b.copy_(s + d)
        self._buffers, self._before = [], []
