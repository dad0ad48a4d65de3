"""A meta-batch of tasks: each task's meta-gradient taken right after its loss, optionally on threads.

`meta_batch` computes each task's meta-gradient right after its loss, so at most one task graph per
worker is alive, optionally on several threads (one task per thread, each with its share of torch's
intra-op threads), and returns a surrogate whose gradient is the mean of the tasks' gradients
(`straight_through`). Each worker thread calls its own structural copy of the backbone (`replica`).

Where the speed and memory come from (measured against learn2learn by ``benchmarks/maml.py``; figures in
``docs/internals.md``): the per-task work is that of plain unrolled autograd; what is saved is (1) each
task's graph, freed as soon as its meta-gradient is taken; (2) intra-op parallelism, which scales poorly
on small convolutions and collapses when the cores are shared (OpenMP threads spin waiting for each
other): tasks run on threads with one intra-op thread each instead, which costs one graph per thread in
memory (so MAML's auto setting does this for second order only on the compiled fused path below, whose
graphs are small); (3) channels-last layout, and in Conv4's meta-training passes batch norm + ReLU +
max-pool fused into one op with closed-form first and second derivatives (`medmeta._accel.fused_block`,
run by the C++ kernels of `medmeta._accel.kernels`): one or two passes over memory per op and a
quarter of the saved activations; its 3x3 convolutions through `medmeta._accel.fused_conv`.
Tasks are not vectorised with `torch.func.vmap` (it was not faster than a loop on CPU), so no result depends
on vmap's batching rules for second-order batch norm.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

T = TypeVar("T")

_REPLICAS: weakref.WeakKeyDictionary[nn.Module, tuple[Any, list[nn.Module]]] = weakref.WeakKeyDictionary()
_REPLICA_LOCK = threading.Lock()
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_WORKER = threading.local()


def _signature(module: nn.Module) -> tuple[Any, ...]:
    return tuple((n, tuple(t.shape)) for n, t in (*module.named_parameters(), *module.named_buffers()))


def replica(module: nn.Module, worker: int) -> nn.Module:
    """A structural copy of `module` for worker thread `worker` (storage on the meta device).

    `functional_call` swaps tensors into the module it calls, so two threads must not call the same
    module; each worker calls its own replica with every parameter and buffer passed explicitly.
    Worker ``-1`` (the calling thread) gets `module` itself.
    """
    if worker < 0:
        return module
    with _REPLICA_LOCK:
        sig = _signature(module)
        cached = _REPLICAS.get(module)
        if cached is None or cached[0] != sig:
            cached = (sig, [])
            _REPLICAS[module] = cached
        copies = cached[1]
        while len(copies) <= worker:
            copies.append(copy.deepcopy(module).to_empty(device="meta"))
        out = copies[worker]
    out.train(module.training)
    return out


def plan_workers(n_tasks: int, requested: int, device: torch.device) -> tuple[int, int]:
    """``(worker threads, intra-op threads per worker)`` for a meta-batch of `n_tasks` tasks.

    ``requested == 0`` (auto): on CPU, one worker per intra-op thread torch may use, at most one per
    task; elsewhere (CUDA) one worker. ``requested == 1``: sequential.
    """
    total = torch.get_num_threads()
    if requested == 1 or n_tasks <= 1 or device.type != "cpu":
        return 1, total
    workers = min(requested or total, n_tasks)
    if workers <= 1:
        return 1, total
    return workers, max(1, total // workers)


def _pool(workers: int, intra: int) -> ThreadPoolExecutor:
    key = (workers, intra)
    if key not in _POOLS:
        counter = iter(range(workers))
        lock = threading.Lock()

        def init() -> None:
            with lock:
                _WORKER.index = next(counter)

        _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="medmeta-task", initializer=init)
    return _POOLS[key]


def run_tasks(fn: Callable[[int, int], T], n_tasks: int, workers: int, intra: int) -> list[T]:
    """``[fn(i, worker) for i in range(n_tasks)]``, on `workers` threads when ``workers > 1``.

    Each worker runs with `intra` intra-op threads and the caller's grad mode; results keep task order,
    so they do not depend on scheduling. Torch's global thread setting is restored afterwards.
    """
    if workers <= 1:
        return [fn(i, -1) for i in range(n_tasks)]
    grad_enabled = torch.is_grad_enabled()
    main_threads = torch.get_num_threads()

    def call(i: int) -> T:
        if torch.get_num_threads() != intra:
            torch.set_num_threads(intra)
        with torch.set_grad_enabled(grad_enabled):
            return fn(i, int(_WORKER.index))

    try:
        return list(_pool(workers, intra).map(call, range(n_tasks)))
    finally:
        torch.set_num_threads(main_threads)  # set_num_threads in a worker also changes the global default


def straight_through(value: Tensor, params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> Tensor:
    """A scalar equal to `value` whose gradient with respect to ``params[i]`` is ``grads[i]``.

    ``value + sum_i <p_i, g_i> - (same).detach()`` adds exactly zero, so logging and NaN checks see the
    real loss while ``backward()`` (also scaled, as by a `GradScaler`) delivers the precomputed gradients.
    """
    dots = [(p * g).sum() for p, g in zip(params, grads, strict=True) if g is not None]
    if not dots:
        return value.detach()
    link = torch.stack(dots).sum()
    return value.detach() + (link - link.detach())


def meta_batch(
    task: Callable[[int, int], tuple[Tensor, Sequence[Tensor | None]]],
    n_tasks: int,
    params: Sequence[Tensor],
    *,
    threads: int = 0,
) -> Tensor:
    """Mean loss over tasks whose gradient is the mean of the tasks' meta-gradients.

    Args:
        task: ``(task index, worker) -> (loss, gradients aligned with params)``; it must call modules
            only through ``replica(module, worker)`` (the worker is -1 on the calling thread).
        n_tasks: meta-batch size.
        params: the meta-parameters.
        threads: worker threads (`plan_workers`: 0 auto, 1 sequential).

    Returns:
        A scalar for the training loop's ``backward()``.
    """
    device = params[0].device if params else torch.device("cpu")
    workers, intra = plan_workers(n_tasks, threads, device)
    results = run_tasks(task, n_tasks, workers, intra)
    loss = torch.stack([r[0].detach() for r in results]).mean()
    mean_grads: list[Tensor | None] = []
    for i in range(len(params)):
        gs = [r[1][i] for r in results if r[1][i] is not None]
        mean_grads.append(None if not gs else torch.stack(gs).sum(0) / n_tasks)  # type: ignore[arg-type]
    return straight_through(loss, params, mean_grads)
