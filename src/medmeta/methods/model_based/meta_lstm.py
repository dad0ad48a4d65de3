"""Meta-LSTM: an LSTM that trains the learner, its cell state being the learner's parameters.

Ravi and Larochelle. "Optimization as a Model for Few-Shot Learning", ICLR 2017,
https://openreview.net/forum?id=rJY0-Kcll. The update ``theta_t = f_t * theta_{t-1} - i_t * grad_t`` is an
LSTM cell update whose forget and input gates are learned, coordinate by coordinate with weights shared
across coordinates, from the preprocessed gradient and loss, the parameter value and the previous gates.

Pure cores: `preprocess_gradient` and `metalstm_update`; the thin classes are `MetaLearner` (the two-layer
LSTM) and `MetaLSTM` (the method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call

from medmeta.methods.base import FewShotMethod, MethodOptions
from medmeta.methods.functional import ParamDict, batchnorm_overrides, channels_last
from medmeta.methods.inner_loop import head_feature_dim, head_logits, select_adapted
from medmeta.methods.model_based.support_norm import forward_with_statistics, support_statistics
from medmeta.models.backbones import Conv4, ResNet12
from medmeta.tasks.episode import Support

_MODEL_PREFIXES = ("backbone.", "head.")


def preprocess_gradient(x: Tensor, p: float = 10.0) -> Tensor:
    """Andrychowicz et al. (2016) preprocessing of gradients and losses for an LSTM optimiser.

    ``(log|x| / p, sign(x))`` where ``|x| >= e^-p``, else ``(-1, e^p * x)``: magnitude and sign on similar
    scales over many orders of magnitude.

    Args:
        x: ``(...)`` values.
        p: the exponent (paper: 10).

    Returns:
        ``(..., 2)``.
    """
    large = x.abs() >= math.exp(-p)
    magnitude = torch.where(large, x.abs().clamp_min(math.exp(-p)).log() / p, -torch.ones_like(x))
    sign = torch.where(large, x.sign(), math.exp(p) * x)
    return torch.stack([magnitude, sign], -1)  # (..., 2)


def metalstm_update(theta: Tensor, grad: Tensor, forget: Tensor, input_gate: Tensor) -> Tensor:
    """The cell update ``c_t = f_t * c_{t-1} - i_t * grad`` (all tensors shaped alike)."""
    return forget * theta - input_gate * grad


def lstm_columns(inputs: Tensor, hidden: Tensor, cell: Tensor, lstm: nn.LSTMCell) -> tuple[Tensor, Tensor]:
    """`nn.LSTMCell`'s update for n independent sequences stored as columns.

    The same maths as ``lstm(inputs.T, (hidden.T, cell.T))`` (gate order i, f, g, o), laid out so that each
    gate is a contiguous block of rows: on a learner with 10^5 coordinates this runs a third faster.

    Args:
        inputs: ``(input_size, n)``.
        hidden: ``(H, n)``.
        cell: ``(H, n)``.
        lstm: holds the weights.

    Returns:
        ``(hidden (H, n), cell (H, n))``.
    """
    h = lstm.hidden_size
    gates = torch.mm(lstm.weight_hh, hidden).addmm_(lstm.weight_ih, inputs)  # (4H, n)
    if lstm.bias:  # in place: neither product keeps its output for the backward pass
        gates = gates.add_((lstm.bias_ih + lstm.bias_hh)[:, None])
    in_forget = torch.sigmoid(gates[: 2 * h])  # (2H, n)
    cell = in_forget[h:] * cell + in_forget[:h] * torch.tanh(gates[2 * h : 3 * h])  # (H, n)
    return torch.sigmoid(gates[3 * h :]) * torch.tanh(cell), cell


class MetaLSTMState(NamedTuple):
    """Per-coordinate state of the meta-learner: first-layer LSTM ``(H, n)`` (one column per
    coordinate) and the previous gates ``(n,)``."""

    hidden: Tensor
    cell: Tensor
    forget: Tensor
    input_gate: Tensor


class MetaLearner(nn.Module):
    """The paper's two-layer meta-learner, applied to every coordinate of the learner with shared weights.

    Layer 1 is an ordinary LSTM over the preprocessed ``[loss, gradient]`` (4 inputs). Layer 2 is the
    update itself: ``f_t = sigmoid(W_F [h_t, theta_{t-1}, f_{t-1}] + b_F)`` and
    ``i_t = sigmoid(W_I [h_t, theta_{t-1}, i_{t-1}] + b_I)``, then `metalstm_update`. As in the paper, the
    gate weights start small and the biases so that ``f`` is near 1 (``b_F`` in [4, 6]) and ``i`` small
    (``b_I`` in [-5, -4]): training starts close to plain gradient descent with a small rate.

    Args:
        hidden: units H of the first layer (paper: 20).
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTMCell(4, hidden)
        self.forget = nn.Linear(hidden + 2, 1)
        self.input_gate = nn.Linear(hidden + 2, 1)
        with torch.no_grad():
            for layer in (self.forget, self.input_gate):
                layer.weight.uniform_(-0.01, 0.01)
            self.forget.bias.uniform_(4.0, 6.0)
            self.input_gate.bias.uniform_(-5.0, -4.0)

    def initial_state(self, theta: Tensor) -> MetaLSTMState:
        """Zero LSTM state and gates for the coordinates of ``theta`` ``(n,)``."""
        zeros = theta.new_zeros(self.lstm.hidden_size, theta.shape[0])
        return MetaLSTMState(zeros, zeros, theta.new_zeros(theta.shape), theta.new_zeros(theta.shape))

    def step(
        self, theta: Tensor, grad: Tensor, loss: Tensor, state: MetaLSTMState, p: float
    ) -> tuple[Tensor, MetaLSTMState]:
        """One learner update.

        Args:
            theta: ``(n,)`` the learner's parameters ``theta_{t-1}`` (the cell state).
            grad: ``(n,)`` the support-loss gradient at ``theta_{t-1}`` (a constant: detached).
            loss: ``()`` the support loss at ``theta_{t-1}`` (detached).
            state: the meta-learner state after the previous step.
            p: preprocessing exponent.

        Returns:
            ``(theta_t (n,), new state)``.
        """
        n = theta.shape[0]
        inputs = torch.cat(
            [preprocess_gradient(loss, p)[:, None].expand(2, n), preprocess_gradient(grad, p).t()]
        )  # (4, n)
        hidden, cell = lstm_columns(inputs, state.hidden, state.cell, self.lstm)  # (H, n) each
        gates = []
        for layer, previous in ((self.forget, state.forget), (self.input_gate, state.input_gate)):
            w = layer.weight[0]  # (H + 2,): [h, theta, previous gate]
            z = w[:-2] @ hidden + w[-2] * theta + w[-1] * previous + layer.bias  # (n,)
            gates.append(torch.sigmoid(z))
        forget, input_gate = gates
        theta_next = metalstm_update(theta, grad, forget, input_gate)
        return theta_next, MetaLSTMState(hidden, cell, forget, input_gate)


class MetaLSTMOptions(MethodOptions):
    """Options of `MetaLSTM`.

    Attributes:
        n_way: rows of the learner's head (episodes may have fewer classes, not more).
        inner_steps: learner updates T on the support set during meta-training.
        eval_steps: updates when adapting in eval mode (None: `inner_steps`).
        hidden: units of the meta-learner's first LSTM layer (paper: 20).
        preprocess_p: exponent p of `preprocess_gradient` (paper: 10).
        adapt: learner parameters the meta-learner updates: ``all`` (paper), ``head`` or comma-separated
            name prefixes; the others are meta-learned and fixed per task.
        feature_dim: width of the backbone's output (None: the backbone's ``out_features``).
    """

    n_way: int = Field(5, ge=2)
    inner_steps: int = Field(5, ge=1)
    eval_steps: int | None = Field(None, ge=1)
    hidden: int = Field(20, ge=1)
    preprocess_p: float = Field(10.0, gt=0.0)
    adapt: str = "all"
    feature_dim: int | None = Field(None, ge=1)


@dataclass(frozen=True)
class MetaLSTMPredictor:
    """The learner trained on one task: its parameters and its batch-norm statistics of the support set.

    Attributes:
        method: whose backbone structure and head are used (never modified).
        params: the learner's parameters ``theta_T`` (``backbone.*``, ``head.*``).
        statistics: batch-norm mean and variance of the support set under ``theta_T``.
        n_way: classes of the task.
    """

    method: MetaLSTM
    params: ParamDict
    statistics: dict[str, Tensor]
    n_way: int

    def predict(self, query_images: Tensor) -> Tensor:
        """``(n_query, C, *spatial)`` -> logits ``(n_query, n_way)``; queries never see each other."""
        features = self.method.features(self.params, query_images, self.statistics)  # (n_query, d)
        return self.method.classify(self.params, features, self.n_way)


class MetaLSTM(FewShotMethod):
    """Ravi and Larochelle. "Optimization as a Model for Few-Shot Learning", ICLR 2017, openreview rJY0-Kcll.

    The learner (backbone + linear head) is trained on the support set for T steps by `MetaLearner`, an
    LSTM whose cell state is the learner's parameters, started at the meta-learned initial parameters
    (the method's own backbone and head); the query loss after the last step trains both.

    As in the paper, gradient and loss inputs are detached (no second derivatives): the meta-gradient
    flows through ``theta_t = f_t * theta_{t-1} - i_t * grad`` and the gates. Batch norm: the support
    passes normalise with the support batch's statistics; queries are normalised with the support set's
    statistics under the final parameters, which is the paper's meta-test rule (statistics gathered
    while training on the task's training set, erased for the next task), used here in meta-training too
    so that training and testing agree. A query's logits therefore never depend on the other queries
    (``per_image_prediction`` is False). Parameters go through `torch.func.functional_call`; the
    backbone's running statistics are never read or written. Head rows are tied to labels, so
    ``permutation_invariant`` is False.

    Example:
        >>> from medmeta.models import Conv4
        >>> method = MetaLSTM(Conv4(in_channels=1, image_size=28), MetaLSTMOptions(inner_steps=5))
        >>> # logits = method.adapt(episode.support).predict(episode.query_images)  # (n_query, n_way)
    """

    Options = MetaLSTMOptions
    options: MetaLSTMOptions
    permutation_invariant: ClassVar[bool] = False
    per_image_prediction: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, options: MetaLSTMOptions | None = None) -> None:
        super().__init__(backbone, options or MetaLSTMOptions())
        opts = self.options
        self.head = nn.Linear(head_feature_dim(backbone, opts.feature_dim), opts.n_way)
        self.meta_learner = MetaLearner(opts.hidden)
        self.adapted = select_adapted(opts.adapt, list(self.model_parameters()))

    def model_parameters(self) -> ParamDict:
        """The learner's initial parameters ``theta_0`` (``backbone.*``, ``head.*``): the LSTM's ``c_0``."""
        return {n: p for n, p in self.named_parameters() if n.startswith(_MODEL_PREFIXES)}

    def features(
        self, params: ParamDict, images: Tensor, statistics: dict[str, Tensor] | None = None
    ) -> Tensor:
        """Features ``(N, d)`` of ``(N, C, *spatial)`` images under `params`.

        Batch norm uses the batch's statistics (None), or the given support `statistics`.
        """
        weights = {k.removeprefix("backbone."): v for k, v in params.items() if k.startswith("backbone.")}
        buffers = dict(self.backbone.named_buffers())
        if images.ndim == 4 and isinstance(self.backbone, Conv4 | ResNet12):
            images = channels_last(images)
        if statistics is not None:
            return forward_with_statistics(self.backbone, weights, buffers, statistics, images)
        overrides = buffers | batchnorm_overrides(self.backbone)
        return functional_call(self.backbone, (weights, overrides), (images,))  # type: ignore[arg-type]

    def classify(self, params: ParamDict, features: Tensor, n_way: int) -> Tensor:
        """Logits ``(N, n_way)`` from features ``(N, d)`` with the first `n_way` head rows.

        Raises:
            ConfigError: more classes than head rows.
        """
        return head_logits(params, features, n_way)

    def support_gradient(self, params: ParamDict, support: Support) -> tuple[Tensor, Tensor]:
        """Detached support loss ``()`` and its gradient ``(n,)`` over the adapted coordinates at `params`."""
        current = {n: v.detach() for n, v in params.items()}
        leaves = [current[n].requires_grad_(True) for n in self.adapted]
        with torch.enable_grad():
            logits = self.classify(current, self.features(current, support.images), support.n_way)
            loss = F.cross_entropy(logits, support.labels)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        flat = [torch.zeros_like(v) if g is None else g for v, g in zip(leaves, grads, strict=True)]
        return loss.detach(), torch.cat([g.reshape(-1) for g in flat])

    def adaptation_steps(self) -> int:
        """T: `inner_steps` in training mode, `eval_steps` (if set) in eval mode."""
        if self.training or self.options.eval_steps is None:
            return self.options.inner_steps
        return self.options.eval_steps

    def learn(self, support: Support, steps: int) -> ParamDict:
        """``theta_T`` after `steps` meta-learner updates on `support`; differentiable when grad is on."""
        params = self.model_parameters()
        shapes = [params[n].shape for n in self.adapted]
        theta = torch.cat([params[n].reshape(-1) for n in self.adapted])  # (n,)
        state = self.meta_learner.initial_state(theta)
        for _ in range(steps):
            current = params | self._unflatten(theta, shapes)
            loss, grad = self.support_gradient(current, support)
            theta, state = self.meta_learner.step(theta, grad, loss, state, self.options.preprocess_p)
        return params | self._unflatten(theta, shapes)

    def _unflatten(self, theta: Tensor, shapes: list[torch.Size]) -> ParamDict:
        pieces = theta.split([math.prod(s) for s in shapes])
        return {n: x.view(s) for n, x, s in zip(self.adapted, pieces, shapes, strict=True)}

    def adapt(self, support: Support, query_images: Tensor | None = None) -> MetaLSTMPredictor:
        params = self.learn(support, self.adaptation_steps())
        weights = {
            k.removeprefix("backbone."): v.detach() for k, v in params.items() if k.startswith("backbone.")
        }
        images = support.images
        if images.ndim == 4 and isinstance(self.backbone, Conv4 | ResNet12):
            images = channels_last(images)
        statistics = support_statistics(self.backbone, weights, dict(self.backbone.named_buffers()), images)
        return MetaLSTMPredictor(self, params, statistics, support.n_way)
