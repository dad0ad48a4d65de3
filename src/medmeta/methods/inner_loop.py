"""The functional inner loop shared by the optimisation-based methods (MAML and kin, Reptile).

Everything here is a pure function over parameter dicts (``name -> Tensor``); the methods call a backbone
only through `torch.func.functional_call`, so no module is ever modified to adapt it.

* `inner_loop` runs ``steps`` updates of the adapted parameters on a support loss and returns the whole
  trajectory ``theta_0 .. theta_K``. ``track=True`` keeps ``theta_K`` differentiable with respect to
  ``theta_0`` (and to learned learning rates): ``create_graph=True`` is exact second-order MAML,
  ``create_graph=False`` first-order MAML (the inner gradients are constants). ``checkpoint=True``
  recomputes each step's support graph during the backward pass instead of keeping it (the memory of one
  step instead of ``K``, for one more support forward and backward per step).
* `meta_batch` computes each task's meta-gradient right after its loss, so at most one task graph per
  worker is alive, optionally on several threads (one task per thread, each with its share of torch's
  intra-op threads), and returns a surrogate whose gradient is the mean of the tasks' gradients.
* Batch norm: `batchnorm_overrides` gives the buffers to pass so that every batch-norm layer normalises
  with the statistics of the batch it sees (the support set while adapting, the query set when
  predicting) and never reads or writes the model's running statistics, in train and eval mode alike.

Speed and memory (measured on 2 CPU cores, Conv4 on 28x28, against learn2learn 0.2.0, see
``benchmarks/maml.py``): the per-task work is that of plain unrolled autograd; what is saved is (1) each
task's graph, freed as soon as its meta-gradient is taken; (2) intra-op parallelism, which scales poorly
on small convolutions and collapses when the cores are shared (OpenMP threads spin waiting for each
other): tasks run on threads with one intra-op thread each instead, which costs one graph per thread in
memory (so MAML's auto setting does this for second order only on the compiled fused path below, whose
graphs are small); (3) channels-last layout, and in Conv4's meta-training passes batch norm + ReLU +
max-pool fused into one op with closed-form first and second derivatives (`medmeta._accel.fused_block`,
run by the C++ kernels of `medmeta._accel.kernels`): one or two passes over memory per op and a
quarter of the saved activations; its 3x3 convolutions through `medmeta._accel.fused_conv`.
Tasks are not vectorised with `torch.func.vmap` (on 2 cores it was not faster than a loop), so no result depends on
vmap's batching rules for second-order batch norm.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

ParamDict = dict[str, Tensor]
#: ``(params after k updates, k) -> scalar support loss``.
StepLoss = Callable[[ParamDict, int], Tensor]
T = TypeVar("T")


class InnerUpdate(Protocol):
    """One inner-loop optimiser step on the adapted parameters.

    Called as ``update(k, params, grads, state) -> (new_params, new_state)`` with lists aligned to the
    adapted names; ``state`` is None at ``k == 0``. Must be written with differentiable tensor ops.
    """

    def __call__(
        self, step: int, params: list[Tensor], grads: list[Tensor], state: Any
    ) -> tuple[list[Tensor], Any]: ...


def sgd_update(lr: Callable[[int, int], Tensor | float]) -> InnerUpdate:
    """Plain gradient descent ``theta - lr(k, i) * g`` (MAML; Meta-SGD and MAML++ give tensor rates).

    Args:
        lr: ``(step k, index i of the adapted parameter) ->`` a float, a scalar tensor (one rate per
            layer) or a tensor shaped like the parameter (one rate per weight).
    """

    def update(step: int, params: list[Tensor], grads: list[Tensor], state: Any) -> tuple[list[Tensor], Any]:
        return [p - lr(step, i) * g for i, (p, g) in enumerate(zip(params, grads, strict=True))], None

    return update


def adam_update(lr: float, betas: tuple[float, float] = (0.0, 0.999), eps: float = 1e-8) -> InnerUpdate:
    """Adam (Kingma and Ba 2015) as a pure function, with bias correction; Reptile uses ``beta1 = 0``."""
    b1, b2 = betas

    def update(step: int, params: list[Tensor], grads: list[Tensor], state: Any) -> tuple[list[Tensor], Any]:
        m_prev, v_prev = state if state is not None else ([None] * len(params), [None] * len(params))
        t = step + 1
        new, m_new, v_new = [], [], []
        for p, g, m, v in zip(params, grads, m_prev, v_prev, strict=True):
            m = (1 - b1) * g if m is None else b1 * m + (1 - b1) * g
            v = (1 - b2) * g * g if v is None else b2 * v + (1 - b2) * g * g
            m_hat = m / (1 - b1**t)
            v_hat = v / (1 - b2**t)
            new.append(p - lr * m_hat / (v_hat.sqrt() + eps))
            m_new.append(m)
            v_new.append(v)
        return new, (m_new, v_new)

    return update


def _grads(loss: Tensor, params: list[Tensor], create_graph: bool) -> list[Tensor]:
    """Gradients of `loss` with zeros for parameters it does not depend on."""
    grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def inner_loop(
    loss_fn: StepLoss,
    params: Mapping[str, Tensor],
    adapted: Sequence[str],
    update: InnerUpdate,
    steps: int,
    *,
    track: bool,
    create_graph: bool,
    checkpoint: bool = False,
) -> list[ParamDict]:
    """Adapt the `adapted` entries of `params` by `steps` updates on ``loss_fn``.

    Args:
        loss_fn: support loss of the parameters after ``k`` updates.
        params: all parameters ``theta_0`` (adapted and fixed).
        adapted: names of the entries to update.
        update: the inner optimiser (`sgd_update`, `adam_update`).
        steps: number of updates ``K``.
        track: keep ``theta_k`` differentiable with respect to ``theta_0`` (meta-training); False detaches
            every step (evaluation, Reptile).
        create_graph: differentiate through the inner gradients (second order); ignored unless `track`.
        checkpoint: with `create_graph`, rebuild each step's graph in the backward pass
            (`torch.utils.checkpoint`, non-reentrant, so learned rates captured by `update` get gradients).

    Returns:
        ``[theta_0, ..., theta_K]``, each a full parameter dict (fixed entries shared with `params`).

    Raises:
        KeyError: a name in `adapted` is not in `params`.
    """
    theta = dict(params)
    missing = [n for n in adapted if n not in theta]
    if missing:
        raise KeyError(f"adapted parameter(s) {missing} are not among the parameters {sorted(theta)}")
    second_order = track and create_graph
    for n in adapted:  # frozen (or detached) adapted tensors still need gradients in the inner loop
        if not theta[n].requires_grad or not track:
            theta[n] = theta[n].detach().requires_grad_(True)
    trajectory = [dict(theta)]
    state: Any = None
    for k in range(steps):

        def step(cur: list[Tensor], state: Any, theta: ParamDict = theta, k: int = k) -> Any:
            with torch.enable_grad():
                g = _grads(loss_fn(theta | dict(zip(adapted, cur, strict=True)), k), cur, second_order)
                if not second_order:
                    g = [gi.detach() for gi in g]
                return update(k, cur, g, state)

        cur = [theta[n] for n in adapted]
        if second_order and checkpoint:
            new, state = _checkpoint(step, cur, state, use_reentrant=False)
        else:
            new, state = step(cur, state)
        if not track:
            new = [x.detach().requires_grad_(True) for x in new]
            state = _detach_tree(state)
        theta = theta | dict(zip(adapted, new, strict=True))
        trajectory.append(theta)
    return trajectory


def _detach_tree(state: Any) -> Any:
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, (list, tuple)):
        return type(state)(_detach_tree(s) for s in state)
    return state


# ----------------------------------------------------------------------------------------------- batch norm


def batchnorm_names(module: nn.Module) -> list[str]:
    """Qualified names of the batch-norm layers (`nn.BatchNorm1d/2d/3d` and subclasses) of `module`."""
    return [n for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def batchnorm_overrides(module: nn.Module) -> dict[str, Tensor | None]:
    """Buffers to pass to `functional_call` so batch norm uses the current batch's statistics only.

    With ``running_mean``, ``running_var`` and ``num_batches_tracked`` set to None, `nn.BatchNorm2d`
    normalises with the batch statistics in train and eval mode and updates nothing.
    """
    out: dict[str, Tensor | None] = {}
    for name in batchnorm_names(module):
        prefix = f"{name}." if name else ""
        for buf in ("running_mean", "running_var", "num_batches_tracked"):
            out[prefix + buf] = None
    return out


def channels_last(images: Tensor) -> Tensor:
    """``(N, C, H, W)`` images in channels-last layout, so convolutions keep that layout downstream.

    One-channel images are given channels-last strides as a view (``.contiguous(channels_last)`` leaves
    them as they are, and a convolution would then produce a contiguous output).
    """
    if images.shape[1] != 1:
        return images.contiguous(memory_format=torch.channels_last)
    x = images.contiguous()
    n, _, h, w = x.shape
    return x.as_strided((n, 1, h, w), (h * w, 1, w, 1))


# ------------------------------------------------------------------------------------------ task parallelism

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
