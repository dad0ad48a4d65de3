"""`InnerLoopMethod`: the thin class every optimisation-based method builds on (MAML, FOMAML, MAML++,
Meta-SGD, ANIL, Reptile): a backbone plus a linear head, called only through `functional_call` over a
parameter dict, so `adapt` returns a predictor holding adapted tensors and never touches the method.

Head and number of ways: the head has ``n_way`` rows (option, default 5); an episode with ``n <= n_way``
classes uses the first ``n`` rows (a 4-way test domain after 5-way training uses rows 0-3), and an episode
with more classes raises a `ConfigError` naming the option to raise. Labels are tied to head rows, so
these methods are not invariant to the order of the classes (``permutation_invariant = False``).

Batch norm: every batch-norm layer normalises with the statistics of the batch it is given (the support
set at each inner step, the query set when predicting), in training and evaluation alike, as in Finn et
al. (2017) and learn2learn; the running statistics of the backbone are never read or written. MAML++ adds
its own per-step running statistics (see `medmeta.methods.gradient_based.maml_plus_plus`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call

from medmeta import _accel
from medmeta.errors import ConfigError
from medmeta.methods.base import FewShotMethod, MethodOptions
from medmeta.methods.functional import (
    InnerUpdate,
    ParamDict,
    StepLoss,
    batchnorm_names,
    batchnorm_overrides,
    channels_last,
    inner_loop,
    sgd_update,
)
from medmeta.methods.meta_batch import meta_batch, replica
from medmeta.tasks.episode import Episode, Support

_MODEL_PREFIXES = ("backbone.", "head.")


def select_adapted(spec: str, names: Sequence[str], exclude: Sequence[str] = ()) -> tuple[str, ...]:
    """Names of the parameters the inner loop adapts.

    Args:
        spec: ``all``; ``head``; or comma-separated name prefixes such as ``head,backbone.features.12``
            (a prefix matches a name equal to it or starting with it and a dot).
        names: candidate parameter names (``backbone.*``, ``head.*``).
        exclude: names never adapted (MAML++'s per-step batch-norm parameters).

    Raises:
        ConfigError: a prefix matches nothing, or nothing is selected.
    """
    allowed = [n for n in names if n not in set(exclude)]
    if spec == "all":
        chosen = allowed
    else:
        prefixes = [p.strip() for p in spec.split(",") if p.strip()]
        chosen = []
        for p in prefixes:
            hits = [n for n in allowed if n == p or n.startswith(p + ".")]
            if not hits:
                raise ConfigError(
                    f"adapt='{spec}': '{p}' matches no adaptable parameter; use 'all', 'head' or prefixes "
                    f"of {', '.join(allowed)}"
                )
            chosen += [n for n in hits if n not in chosen]
    if not chosen:
        raise ConfigError(f"adapt='{spec}' selects no parameter: use 'all' or 'head'")
    return tuple(n for n in names if n in chosen)


def head_feature_dim(backbone: nn.Module, requested: int | None) -> int:
    """Width ``d`` of the backbone's ``(N, d)`` output: `requested`, else ``backbone.out_features``.

    Raises:
        ConfigError: neither is given.
    """
    if requested is not None:
        return requested
    declared = getattr(backbone, "out_features", None)
    if isinstance(declared, int):
        return declared
    raise ConfigError(
        f"{type(backbone).__name__} has no integer out_features attribute: set the method option "
        "feature_dim to the width of its (N, d) output"
    )


def head_logits(params: ParamDict, features: Tensor, n_way: int) -> Tensor:
    """Logits ``(N, n_way)`` of features ``(N, d)`` under the first `n_way` rows of ``head.weight``/``head.bias``.

    Raises:
        ConfigError: more classes than head rows.
    """
    rows = params["head.weight"].shape[0]
    if n_way > rows:
        raise ConfigError(
            f"the episode has {n_way} classes but the head has n_way={rows} rows: set the method "
            f"option n_way={n_way} (or more) and meta-train again"
        )
    return F.linear(features, params["head.weight"][:n_way], params["head.bias"][:n_way])


class InnerLoopOptions(MethodOptions):
    """Options shared by the optimisation-based methods.

    Attributes:
        n_way: rows of the classification head (episodes may have fewer classes, not more).
        inner_steps: inner-loop updates during meta-training.
        inner_lr: inner-loop learning rate (initial value where it is learned).
        eval_steps: inner-loop updates when adapting in eval mode (None: `inner_steps`).
        adapt: parameters the inner loop updates: ``all``, ``head`` or comma-separated name prefixes.
        feature_dim: width of the backbone's output (None: the backbone's ``out_features``).
        task_threads: threads that meta-train the tasks of a meta-batch concurrently, each with an equal
            share of torch's intra-op threads; 1: one task at a time. 0 (auto): on CPU, one thread per
            intra-op thread, except for second order outside the compiled fused Conv4 path
            (`fused_training`), whose task graphs are large: there one task at a time, so that only
            one task graph is alive (the measurements are in ``docs/internals.md``).
        channels_last: run 2D passes in channels-last layout. In second-order meta-training (support
            and query passes), a 2D `Conv4` with batch statistics (every method here but MAML++ while
            it folds running statistics) runs through `medmeta._accel.fused_block`: batch norm, ReLU
            and max-pool as one op with closed-form first and second derivatives, accurate float32
            statistics and a quarter of the saved activations, run by compiled C++ kernels where a
            compiler exists (`medmeta._accel.kernels`). With those kernels every CPU pass of such a
            Conv4 takes the fused path (first-order meta-training and evaluation too). Second-order
            support passes of other backbones stay contiguous: PyTorch's channels-last batch-norm
            kernels accumulate sequentially in float32, which moves multi-step second-order
            meta-gradients (speed and accuracy measured in ``docs/internals.md``).
        zero_head: start every task's head at zero, in meta-training and adaptation alike (the
            "zeroing trick" of Kao et al., "MAML is a Noisy Contrastive Learner in Classification",
            ICLR 2022, arXiv:2106.15367): the head is not meta-learned, the first inner step writes
            each class's row from its support features, and episodes with more ways than seen in
            training start unbiased (a learned head's untrained rows barely move in one inner step).
            Needs the head among the adapted parameters.
    """

    n_way: int = Field(5, ge=2)
    inner_steps: int = Field(1, ge=1)
    inner_lr: float = Field(0.4, gt=0.0)
    eval_steps: int | None = Field(None, ge=1)
    adapt: str = "all"
    feature_dim: int | None = Field(None, ge=1)
    task_threads: int = Field(0, ge=0)
    channels_last: bool = True
    zero_head: bool = False


@dataclass(frozen=True)
class AdaptedPredictor:
    """A classifier for one task: the method's functional forward with adapted parameters.

    Attributes:
        method: whose forward is used (never modified).
        params: adapted parameters (``backbone.*``, ``head.*``).
        n_way: classes of the task (the first `n_way` head rows).
        step: inner steps taken (selects per-step parameters in MAML++).
        backbone: the module `functional_call` runs (the method's backbone, or a worker's replica).
    """

    method: InnerLoopMethod
    params: ParamDict
    n_way: int
    step: int
    backbone: nn.Module

    def predict(self, query_images: Tensor) -> Tensor:
        """``(n_query, C, *spatial)`` -> logits ``(n_query, n_way)``."""
        return self.method.logits(self.params, query_images, self.n_way, self.step, self.backbone)


class InnerLoopMethod(FewShotMethod):
    """Base of the optimisation-based methods: backbone + linear head adapted by `inner_loop`.

    Subclasses choose the inner optimiser (`inner_update`), the order of differentiation
    (`second_order`) and may add per-step parameters (`step_parameters`, `batchnorm_buffers`).
    """

    permutation_invariant = False
    per_image_prediction = True
    Options = InnerLoopOptions
    options: InnerLoopOptions

    def __init__(self, backbone: nn.Module, options: InnerLoopOptions | None = None) -> None:
        super().__init__(backbone, options or self.Options())
        opts = self.options
        self.head = nn.Linear(head_feature_dim(backbone, opts.feature_dim), opts.n_way)
        self.batchnorm_layers = tuple(batchnorm_names(backbone))
        names = list(self.model_parameters())
        self.adapted = select_adapted(opts.adapt, names, self.not_adaptable())
        if opts.zero_head and not any(n.startswith("head.") for n in self.adapted):
            raise ConfigError(
                f"zero_head starts the head at zero, so it must be adapted, but adapt={opts.adapt!r} "
                "leaves it out: set adapt=all (or head), or zero_head=false"
            )

    # ----------------------------------------------------------------------------------------- hooks
    def not_adaptable(self) -> tuple[str, ...]:
        """Parameter names the inner loop must not update."""
        return ()

    def inner_update(self) -> InnerUpdate:
        """The inner optimiser (default: SGD with `inner_lr`)."""
        return sgd_update(self.step_size)

    def step_size(self, step: int, index: int) -> Tensor | float:
        """Learning rate of adapted parameter ``self.adapted[index]`` at inner step `step`."""
        return self.options.inner_lr

    def second_order(self) -> bool:
        """Differentiate through the inner gradients during meta-training."""
        return False

    def step_parameters(self, params: ParamDict, step: int) -> ParamDict:
        """Parameters for a forward pass after `step` updates (MAML++ swaps in per-step batch norm)."""
        return params

    def batchnorm_buffers(self, step: int) -> dict[str, Tensor | None]:
        """Batch-norm buffers for a forward after `step` updates (default: batch statistics only)."""
        return batchnorm_overrides(self.backbone)

    # ---------------------------------------------------------------------------------- functional core
    def model_parameters(self) -> ParamDict:
        """The backbone's and head's parameters, named ``backbone.*`` and ``head.*``."""
        return {n: p for n, p in self.named_parameters() if n.startswith(_MODEL_PREFIXES)}

    def initial_parameters(self) -> ParamDict:
        """``theta_0`` of a task: `model_parameters`, with the head at zero under ``zero_head`` (fresh
        leaves, so the inner loop can differentiate with respect to them; no meta-gradient reaches the
        head's own parameters)."""
        params = self.model_parameters()
        if self.options.zero_head:
            for n in ("head.weight", "head.bias"):
                params[n] = torch.zeros_like(params[n], requires_grad=True)
        return params

    def features(
        self,
        params: ParamDict,
        images: Tensor,
        step: int,
        backbone: nn.Module,
        *,
        twice: bool = False,
        lean: bool = False,
    ) -> Tensor:
        """Backbone features ``(N, d)`` of ``(N, C, *spatial)`` images under `params`.

        `twice`: the result will be differentiated twice (second-order support passes, or any support
        pass of meta-training on the compiled fused path); `lean`: it is part of a meta-training task
        graph (query passes), where saved memory counts. With the
        ``channels_last`` option (see `InnerLoopOptions`) such passes of a 2D `Conv4` with batch
        statistics run the fused forward of `medmeta._accel.fused_block` (every pass on CPU when its
        compiled kernels are available), and other passes run in channels-last layout.
        """
        p = self.step_parameters(params, step)
        weights = {k.removeprefix("backbone."): v for k, v in p.items() if k.startswith("backbone.")}
        overrides = self.batchnorm_buffers(step)
        if self.options.channels_last and images.ndim == 4:
            if _accel.enabled():  # MEDMETA_KERNELS=off: PyTorch's modules, no medmeta._accel import
                from medmeta._accel.fused_block import fused_conv4_forward
                from medmeta._accel.kernels import fused_block_kernels

                compiled = images.device.type == "cpu" and fused_block_kernels() is not None
                if (twice or lean or compiled) and all(v is None for v in overrides.values()):
                    fused = fused_conv4_forward(backbone, weights, channels_last(images))
                    if fused is not None:
                        return fused
            if not twice:
                images = channels_last(images)
        buffers = dict(self.backbone.named_buffers()) | overrides
        return functional_call(backbone, (weights, buffers), (images,))  # type: ignore[arg-type]

    def classify(self, params: ParamDict, features: Tensor, n_way: int) -> Tensor:
        """Logits ``(N, n_way)`` from features ``(N, d)`` with the first `n_way` head rows."""
        return head_logits(params, features, n_way)

    def logits(
        self,
        params: ParamDict,
        images: Tensor,
        n_way: int,
        step: int,
        backbone: nn.Module | None = None,
        *,
        twice: bool = False,
        lean: bool = False,
    ) -> Tensor:
        """Logits ``(N, n_way)`` of images ``(N, C, *spatial)`` after `step` inner updates."""
        module = self.backbone if backbone is None else backbone
        feats = self.features(params, images, step, module, twice=twice, lean=lean)
        return self.classify(params, feats, n_way)

    def support_loss(
        self, params: ParamDict, support: Support, *, backbone: nn.Module, track: bool
    ) -> StepLoss:
        """``(theta_k, k) -> cross-entropy on the support``; ANIL-style head-only adaptation embeds once."""
        head_only = all(n.startswith("head.") for n in self.adapted) and not self.step_dependent_backbone()
        twice = track and (self.second_order() or self.fused_training())
        if head_only:
            with torch.set_grad_enabled(track):
                feats = self.features(params, support.images, 0, backbone, twice=twice)  # (n_support, d)
            return lambda p, k: F.cross_entropy(self.classify(p, feats, support.n_way), support.labels)
        return lambda p, k: F.cross_entropy(
            self.logits(p, support.images, support.n_way, k, backbone, twice=twice), support.labels
        )

    def step_dependent_backbone(self) -> bool:
        """True when the backbone's forward depends on the inner step (per-step parameters)."""
        return False

    def trajectory(
        self,
        support: Support,
        steps: int,
        *,
        track: bool,
        backbone: nn.Module | None = None,
        losses: list[Tensor] | None = None,
    ) -> list[ParamDict]:
        """``[theta_0, ..., theta_steps]`` adapted on `support` (see `inner_loop`).

        Args:
            support: the images and labels to adapt on.
            steps: inner updates.
            track: keep the result differentiable with respect to the meta-parameters.
            backbone: the module to call (a worker's `replica`; default: the method's backbone).
            losses: if given, receives the detached support loss of every step.
        """
        module = self.backbone if backbone is None else backbone
        params = self.initial_parameters()
        loss_fn = self.support_loss(params, support, backbone=module, track=track)
        if losses is not None:
            inner_fn = loss_fn

            def loss_fn(p: ParamDict, k: int) -> Tensor:
                value = inner_fn(p, k)
                losses.append(value.detach())
                return value

        with torch.enable_grad():
            return inner_loop(
                loss_fn,
                params,
                self.adapted,
                self.inner_update(),
                steps,
                track=track,
                create_graph=self.second_order(),
                checkpoint=bool(getattr(self.options, "checkpoint_inner", False)),
            )

    def adaptation_steps(self) -> int:
        """Inner steps used by `adapt`: `inner_steps` in training mode, `eval_steps` in eval mode."""
        opts = self.options
        if self.training or opts.eval_steps is None:
            return opts.inner_steps
        return opts.eval_steps

    def adapt(self, support: Support, query_images: Tensor | None = None) -> AdaptedPredictor:
        """Adapt a copy of the parameters on the support set; differentiable when grad mode is on.

        Works under ``torch.no_grad()`` (evaluation): the inner gradients are taken with grad enabled
        and the adapted tensors are detached.
        """
        steps = self.adaptation_steps()
        trajectory = self.trajectory(support, steps, track=torch.is_grad_enabled())
        return AdaptedPredictor(self, trajectory[-1], support.n_way, steps, self.backbone)

    def task_loss(self, episode: Episode, worker: int) -> tuple[Tensor, Any]:
        """Meta-training loss of one episode on `worker` (-1: this thread) and any side result."""
        module = replica(self.backbone, worker)
        steps = self.options.inner_steps
        track = torch.is_grad_enabled()
        final = self.trajectory(episode.support, steps, track=track, backbone=module)[-1]
        lean = track and (self.second_order() or self.fused_training())
        logits = self.logits(final, episode.query_images, episode.n_way, steps, module, lean=lean)
        return F.cross_entropy(logits, episode.query_labels), None

    def finish_batch(self, extras: Sequence[Any]) -> None:
        """Consume the side results of a meta-batch's tasks, in task order (MAML++: running statistics)."""

    def episode_loss(self, episode: Episode) -> Tensor:
        loss, extra = self.task_loss(episode, -1)
        self.finish_batch([extra])
        return loss

    def task_threads(self) -> int:
        """Worker threads for a meta-batch (`meta_batch`'s ``threads``), resolving the auto setting."""
        requested = self.options.task_threads
        if requested == 0 and self.second_order() and not self.fused_training():
            return 1
        return requested

    def fused_training(self) -> bool:
        """Meta-training passes (first or second order) run through the compiled fused Conv4 kernels:
        faster than PyTorch's ops, and task graphs small enough for concurrent second-order tasks (see
        `InnerLoopOptions.task_threads`)."""
        if not (self.options.channels_last and _accel.enabled()):
            return False
        from medmeta._accel.fused_block import fused_conv4_supported
        from medmeta._accel.kernels import fused_block_kernels

        return fused_conv4_supported(self.backbone) and fused_block_kernels() is not None

    def batch_loss(self, episodes: Sequence[Episode]) -> Tensor:
        """Mean query loss; each task's meta-gradient is taken right after its loss (one graph alive per
        worker), on several threads when `task_threads` allows; the result backpropagates exactly that."""
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        if not torch.is_grad_enabled() or not named:
            return super().batch_loss(episodes)
        params = [p for _, p in named]
        extras: list[Any] = [None] * len(episodes)

        def task(i: int, worker: int) -> tuple[Tensor, Sequence[Tensor | None]]:
            loss, extras[i] = self.task_loss(episodes[i], worker)
            return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)

        out = meta_batch(task, len(episodes), params, threads=self.task_threads())
        self.finish_batch(extras)
        return out
