"""The local learners and one round of local training at a site.

A learner is a registered medmeta method plus the batches it trains on; nothing here is a second copy of
an algorithm: `local_round` runs medmeta's `train_one_epoch` (the loop of `fit`: loss, NaN check, `step`)
for ``local_steps`` steps with a fresh optimiser, as a FedAvg client does every round.

==============  ===============  ==========================================================================
learner         medmeta method   batches
==============  ===============  ==========================================================================
``maml``        ``maml``         episodes of all the site's classes, shuffled labels (FedMeta, MAML)
``meta_sgd``    ``meta_sgd``     the same (FedMeta, Meta-SGD: the per-weight inner rates are averaged too)
``per_fedavg``  ``fomaml``       episodes in the site's class order: support = Per-FedAvg's batch D,
                                 query = D'; one inner step (Fallah et al. 2020, first-order variant)
``supervised``  ``finetune``     mini-batches of the site's images, labels in its class order (FedAvg,
                                 FedProx); tested by fine-tuning a new head on the shots
==============  ===============  ==========================================================================

Every site's model has one head of ``n_way`` rows, the most classes of any site, so that all sites
share one parameter shape; a site with fewer classes uses the first rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from medmeta.config import TrainConfig
from medmeta.config.federated import FederatedConfig, Learner
from medmeta.data.datasets import ImageDataset
from medmeta.data.transforms import Normalization
from medmeta.federated.params import proximal_term
from medmeta.federated.sites import SiteOrderSampler
from medmeta.methods import build_method
from medmeta.methods.base import FewShotMethod
from medmeta.methods.transfer.base import SupervisedMethod
from medmeta.models.backbones import Conv4
from medmeta.tasks.sampler import EpisodeSampler, MultiDomainSampler
from medmeta.train.loop import BatchSource, train_one_epoch
from medmeta.train.sources import EpisodicBatches
from medmeta.train.supervised import LabelledImages, SupervisedBatches

#: the registered medmeta method behind each learner
LEARNER_METHOD: dict[Learner, str] = {
    "maml": "maml",
    "meta_sgd": "meta_sgd",
    "per_fedavg": "fomaml",
    "supervised": "finetune",
}
#: options a learner sets unless the config says otherwise (Per-FedAvg: one small inner step; at 0.4,
#: MAML's default, its fixed-label heads collapsed to one class on breast and pneumonia)
DEFAULT_OPTIONS: dict[Learner, dict[str, Any]] = {"per_fedavg": {"inner_steps": 1, "inner_lr": 0.05}}


def normalization(channels: int) -> Normalization:
    """uint8 images -> the network's inputs (medmeta's default for models trained from scratch)."""
    return Normalization(mean=(0.5,) * channels, std=(0.25,) * channels)


def group_norm(module: nn.Module) -> nn.Module:
    """`module` made fit for per-image gradients, in place: every batch-norm layer becomes a group norm over
    the same channels, every in-place ReLU an out-of-place one.

    DP-SGD needs per-image gradients, which batch norm (mixing the images of a batch) does not have;
    Opacus's backward hooks forbid in-place changes of the tensors they watch.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.GroupNorm(min(32, child.num_features), child.num_features))
        elif isinstance(child, nn.ReLU) and child.inplace:
            setattr(module, name, nn.ReLU())
        else:
            group_norm(child)
    return module


def build_model(
    learner: Learner,
    cfg: FederatedConfig,
    *,
    n_way: int,
    seed: int,
    norm: str = "batch",
) -> FewShotMethod:
    """A learner's model: Conv4 (seeded) and its method, a head of `n_way` rows.

    Args:
        learner: which learner.
        cfg: image size and channels, ``methods[learner]`` options.
        n_way: head rows (the most classes of any site).
        seed: initial weights.
        norm: ``batch`` or ``group`` (for DP).

    Raises:
        ConfigError: an unknown method option.
    """
    options = {**DEFAULT_OPTIONS.get(learner, {}), **cfg.methods.get(learner, {})}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone: nn.Module = Conv4(in_channels=cfg.data.channels, image_size=cfg.data.image_size)
        if norm == "group":
            backbone = group_norm(backbone)
        if learner == "supervised":
            options.setdefault("batch_size", cfg.train.batch_size)
            method = build_method(LEARNER_METHOD[learner], backbone, options)
            assert isinstance(method, SupervisedMethod)
            method.set_head_sizes([n_way])
        else:
            method = build_method(LEARNER_METHOD[learner], backbone, {**options, "n_way": n_way})
    return method


def round_config(cfg: FederatedConfig, seed: int) -> TrainConfig:
    """The `TrainConfig` of one round: ``local_steps`` steps of one episode (or one mini-batch)."""
    return TrainConfig(
        epochs=1,
        episodes_per_epoch=cfg.train.local_steps,
        meta_batch=1,
        lr=cfg.train.lr,
        seed=seed,
        device="cpu",
    )


def make_source(
    learner: Learner,
    method: FewShotMethod,
    datasets: Sequence[ImageDataset],
    cfg: FederatedConfig,
    *,
    seed: int,
    steps: int | None = None,
) -> BatchSource:
    """The batches a learner trains on: one site's training images, or several sites' pooled.

    Args:
        learner: which learner.
        method: its model (the supervised source recomputes its feature mean).
        datasets: the training images (one site, or every site for centralised training).
        cfg: episode sizes, batch size.
        seed: the stream's seed; batch ``b`` of round ``r`` is batch ``r * steps + b`` of the stream.
        steps: steps per round (default ``train.local_steps``).
    """
    t = cfg.train
    tc = round_config(cfg, seed)
    if steps is not None:
        tc = tc.model_copy(update={"episodes_per_epoch": steps})
    prepare = normalization(cfg.data.channels)
    if learner == "supervised":
        assert isinstance(method, SupervisedMethod)
        return SupervisedBatches(method, LabelledImages.build(list(datasets)), tc, prepare=prepare)
    sampler: Any
    if learner == "per_fedavg":
        if len(datasets) != 1:
            raise ValueError("Per-FedAvg trains on one site's class order: give one dataset")
        sampler = SiteOrderSampler(datasets[0], t.n_shot, t.n_query, seed=seed, n_episodes=10**9)
    elif len(datasets) == 1:
        sampler = EpisodeSampler(datasets[0], None, t.n_shot, t.n_query, seed=seed, n_episodes=10**9)
    else:
        sampler = MultiDomainSampler(datasets, None, t.n_shot, t.n_query, seed=seed, n_episodes=10**9)
    return EpisodicBatches(sampler, tc, prepare=prepare)


class ProximalSource:
    """A batch source whose loss gains FedProx's proximal term ``mu / 2 * ||w - w_global||^2``.

    Args:
        source: the learner's batches.
        anchor: the global parameters of this round, by name (constants).
        mu: the proximal weight.
    """

    def __init__(self, source: BatchSource, anchor: dict[str, Tensor], mu: float) -> None:
        self.source, self.anchor, self.mu = source, anchor, mu
        self.steps_per_epoch = source.steps_per_epoch

    def batch(self, index: int, device: torch.device) -> Any:
        return self.source.batch(index, device)

    def loss(self, method: Any, batch: Any) -> Tensor:
        return self.source.loss(method, batch) + proximal_term(method, self.anchor, self.mu)

    def after_epoch(self, method: Any, device: torch.device) -> None:
        self.source.after_epoch(method, device)


class Privacy(Protocol):
    """DP-SGD for one round (`medmeta.federated.dp.DPSGD`): a private optimiser and batches."""

    def wrap(
        self, method: FewShotMethod, optimizer: torch.optim.Optimizer, source: BatchSource
    ) -> tuple[torch.optim.Optimizer, BatchSource, Callable[[], None]]: ...


def make_optimizer(cfg: FederatedConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """A fresh local optimiser (Adam or SGD at ``train.lr``)."""
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.train.lr)
    return torch.optim.Adam(params, lr=cfg.train.lr)


def local_round(
    method: FewShotMethod,
    source: BatchSource,
    cfg: FederatedConfig,
    round_index: int,
    *,
    mu: float | None = None,
    privacy: Privacy | None = None,
) -> float:
    """One round of local training from the method's current weights; returns the mean loss.

    Args:
        method: the site's model, holding the global weights of this round; trained in place.
        source: its batches (`make_source`).
        cfg: optimiser and steps.
        round_index: 0-based round (selects this round's batches).
        mu: FedProx's proximal weight (None: plain local training).
        privacy: DP-SGD (None: none).
    """
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params)
    release: Callable[[], None] | None = None
    if mu is not None:
        anchor = {n: p.detach().clone() for n, p in method.named_parameters()}
        source = ProximalSource(source, anchor, mu)
    if privacy is not None:
        optimizer, source, release = privacy.wrap(method, optimizer, source)
    device = torch.device("cpu")
    try:
        loss = train_one_epoch(
            method,
            source,
            optimizer,
            round_index,
            round_config(cfg, 0),
            device=device,
            scaler=None,
            scheduler=None,
            progress=None,
        )
    finally:
        if release is not None:
            release()
    source.after_epoch(method, device)
    return loss
