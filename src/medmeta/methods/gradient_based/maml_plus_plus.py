"""MAML++: the training recipe of Antoniou, Edwards and Storkey (2019) on the functional inner loop."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medmeta.methods.functional import ParamDict, batchnorm_overrides
from medmeta.methods.gradient_based.maml import MAMLOptions
from medmeta.methods.inner_loop import InnerLoopMethod
from medmeta.methods.meta_batch import replica
from medmeta.tasks.episode import Episode

_RECORD = threading.local()  # per-thread scratch running statistics of the task being meta-trained


def multi_step_loss_weights(epoch: int, msl_epochs: int, steps: int) -> list[float]:
    """Weights of the query losses after inner steps ``1..steps`` (MAML++ multi-step loss, MSL).

    They start uniform (``1 / steps``) and move linearly towards the last step over `msl_epochs`
    epochs; the earlier steps keep at least ``0.03 / steps`` (the schedule of the authors' code).
    From epoch `msl_epochs` on, only the last step counts.

    Args:
        epoch: 0-based current epoch.
        msl_epochs: epochs with the multi-step loss (0: never).
        steps: inner steps ``K``.

    Returns:
        ``K`` non-negative weights summing to 1.
    """
    if epoch >= msl_epochs or steps == 1:
        return [0.0] * (steps - 1) + [1.0]
    decay = 1.0 / steps / msl_epochs
    floor = 0.03 / steps
    early = [max(1.0 / steps - epoch * decay, floor) for _ in range(steps - 1)]
    last = min(1.0 / steps + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    total = sum(early) + last
    return [w / total for w in [*early, last]]


def loss_per_step(logits_at: Callable[[int], Tensor], labels: Tensor, weights: Sequence[float]) -> Tensor:
    """``sum_k weights[k-1] * CE(logits_at(k), labels)`` for ``k = 1..len(weights)``, zero weights skipped."""
    terms = [w * F.cross_entropy(logits_at(k), labels) for k, w in enumerate(weights, start=1) if w != 0]
    return torch.stack(terms).sum()


class StepBatchNorm(nn.Module):
    """Per-step affine parameters and running statistics of one batch-norm layer: rows ``0..K``.

    Row ``k`` serves every forward pass made with the parameters after ``k`` inner updates.
    """

    weight: nn.Parameter | None
    bias: nn.Parameter | None
    running_mean: Tensor
    running_var: Tensor

    def __init__(self, layer: nn.modules.batchnorm._BatchNorm, rows: int) -> None:
        super().__init__()
        c = layer.num_features
        self.weight = None if layer.weight is None else nn.Parameter(layer.weight.detach().repeat(rows, 1))
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().repeat(rows, 1))
        self.register_buffer("running_mean", torch.zeros(rows, c))
        self.register_buffer("running_var", torch.ones(rows, c))


class MAMLPlusPlusOptions(MAMLOptions):
    """Options of `MAMLPlusPlus` (see `MAMLOptions` for the shared ones).

    Attributes:
        learn_inner_lr: learn one inner learning rate per adapted tensor and step (LSLR), from `inner_lr`.
        per_step_bn: per-step batch-norm weights and biases (BNWB) and running statistics (BNRS).
        multi_step_loss_fraction: share of the epochs trained on the annealed multi-step loss (MSL).
        first_order_fraction: share of the epochs trained first order (derivative-order annealing, DA).
        bn_stats: statistics batch norm uses in eval mode: ``batch`` (each task's own batch, as during
            training) or ``running`` (the per-step running statistics of meta-training).
    """

    inner_steps: int = Field(5, ge=1)
    inner_lr: float = Field(0.1, gt=0.0)
    learn_inner_lr: bool = True
    per_step_bn: bool = True
    multi_step_loss_fraction: float = Field(0.1, ge=0.0, le=1.0)
    first_order_fraction: float = Field(0.3, ge=0.0, le=1.0)
    bn_stats: Literal["batch", "running"] = "batch"


def _key(name: str) -> str:
    return name.replace(".", "__")


class MAMLPlusPlus(InnerLoopMethod):
    """MAML++ (Antoniou, Edwards, Storkey, "How to train your MAML", ICLR 2019, arXiv:1810.09502).

    MAML made stable: the query loss after every inner step, with weights annealed towards the last
    step (MSL); first-order meta-gradients for the first epochs (DA); learned per-layer, per-step inner
    learning rates (LSLR); per-step batch-norm weights, biases and running statistics (BNWB, BNRS).
    The paper's cosine annealing of the meta learning rate is the training loop's ``lr_schedule: cosine``.

    The schedules follow `set_epoch`; without it (a hand-written loop) the method trains as after the
    annealing: second order, last-step loss. With ``per_step_bn`` the backbone's own batch-norm weights
    are frozen (``requires_grad=False``): the per-step copies in ``step_bn`` replace them. The per-step
    running statistics are updated by `episode_loss` and `batch_loss` in training mode (never by `adapt`)
    and used in eval mode only with ``bn_stats="running"``.

    Example:
        >>> from medmeta.models import Conv4
        >>> method = MAMLPlusPlus(Conv4(in_channels=1, image_size=28), MAMLPlusPlusOptions(inner_steps=5))
        >>> # method.set_epoch(0, 100); loss = method.batch_loss(episodes)
    """

    Options = MAMLPlusPlusOptions
    options: MAMLPlusPlusOptions

    def __init__(self, backbone: nn.Module, options: MAMLPlusPlusOptions | None = None) -> None:
        super().__init__(backbone, options or MAMLPlusPlusOptions())
        opts = self.options
        rows = opts.inner_steps + 1
        self.step_bn = nn.ModuleDict()
        if opts.per_step_bn:
            for name in self.batchnorm_layers:
                layer = backbone.get_submodule(name)
                assert isinstance(layer, nn.modules.batchnorm._BatchNorm)
                self.step_bn[_key(name)] = StepBatchNorm(layer, rows)
                for p in layer.parameters(recurse=False):
                    p.requires_grad_(False)
        self.inner_lrs = nn.Parameter(
            torch.full((len(self.adapted), opts.inner_steps), opts.inner_lr),
            requires_grad=opts.learn_inner_lr,
        )
        self._epoch: int | None = None
        self._epochs = 1

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self._epoch, self._epochs = epoch, epochs

    def _annealing(self, fraction: float) -> bool:
        return self._epoch is not None and self._epoch < round(fraction * self._epochs)

    def second_order(self) -> bool:
        return not (self.options.first_order or self._annealing(self.options.first_order_fraction))

    def fused_training(self) -> bool:
        """Per-step batch norm folds running statistics while training: not the fused path."""
        return not self.options.per_step_bn and super().fused_training()

    def query_loss_weights(self) -> list[float]:
        """Weights of the query losses after steps ``1..K`` at the current epoch."""
        steps = self.options.inner_steps
        if self._epoch is None:
            return multi_step_loss_weights(0, 0, steps)
        msl_epochs = round(self.options.multi_step_loss_fraction * self._epochs)
        return multi_step_loss_weights(self._epoch, msl_epochs, steps)

    def not_adaptable(self) -> tuple[str, ...]:
        if not self.options.per_step_bn:
            return ()
        return tuple(f"backbone.{layer}.{p}" for layer in self.batchnorm_layers for p in ("weight", "bias"))

    def step_size(self, step: int, index: int) -> Tensor:
        return self.inner_lrs[index, min(step, self.options.inner_steps - 1)]

    def step_dependent_backbone(self) -> bool:
        return self.options.per_step_bn

    def step_parameters(self, params: ParamDict, step: int) -> ParamDict:
        if not self.options.per_step_bn:
            return params
        row = min(step, self.options.inner_steps)
        out = dict(params)
        for name in self.batchnorm_layers:
            sb = self._step_bn(name)
            if sb.weight is not None and sb.bias is not None:
                out[f"backbone.{name}.weight"] = sb.weight[row]
                out[f"backbone.{name}.bias"] = sb.bias[row]
        return out

    def batchnorm_buffers(self, step: int) -> dict[str, Tensor | None]:
        out = batchnorm_overrides(self.backbone)
        if not self.options.per_step_bn:
            return out
        row = min(step, self.options.inner_steps)
        scratch: dict[str, tuple[Tensor, Tensor]] | None = getattr(_RECORD, "stats", None)
        use_running = not self.training and self.options.bn_stats == "running"
        for name in self.batchnorm_layers:
            sb = self._step_bn(name)
            if scratch is not None:  # training: batch statistics, folded into scratch running averages
                mean, var = scratch[name]
            elif use_running:
                mean, var = sb.running_mean, sb.running_var
            else:
                continue
            out[f"{name}.running_mean"] = mean[row]
            out[f"{name}.running_var"] = var[row]
            out[f"{name}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
        return out

    def task_loss(self, episode: Episode, worker: int) -> tuple[Tensor, Any]:
        """Weighted query losses of the inner steps; records per-step statistics in training mode."""
        record = self.training and torch.is_grad_enabled() and self.options.per_step_bn
        _RECORD.stats = (
            {n: (sb.running_mean.clone(), sb.running_var.clone()) for n, sb in self._step_bn_items()}
            if record
            else None
        )
        try:
            module = replica(self.backbone, worker)
            traj = self.trajectory(
                episode.support, self.options.inner_steps, track=torch.is_grad_enabled(), backbone=module
            )
            loss = loss_per_step(
                lambda k: self.logits(traj[k], episode.query_images, episode.n_way, k, module),
                episode.query_labels,
                self.query_loss_weights(),
            )
            stats = _RECORD.stats
            snapshot = None if stats is None else {n: (m.clone(), v.clone()) for n, (m, v) in stats.items()}
        finally:
            _RECORD.stats = None
        return loss, snapshot

    def _step_bn(self, layer: str) -> StepBatchNorm:
        return cast(StepBatchNorm, self.step_bn[_key(layer)])

    def _step_bn_items(self) -> list[tuple[str, StepBatchNorm]]:
        return [(n, self._step_bn(n)) for n in self.batchnorm_layers]

    def finish_batch(self, extras: Sequence[Any]) -> None:
        """Running statistics <- mean over the tasks of their momentum-updated copies."""
        done = [e for e in extras if e is not None]
        if not done:
            return
        with torch.no_grad():
            for name, sb in self._step_bn_items():
                sb.running_mean.copy_(torch.stack([e[name][0] for e in done]).mean(0))
                sb.running_var.copy_(torch.stack([e[name][1] for e in done]).mean(0))
