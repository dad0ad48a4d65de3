"""Continual learning strategies for a stream of K-shot stages (class-incremental: one classifier over every
class seen so far).

- ``naive``: fine-tune on each stage's K-shot images only (the lower bound: old classes are forgotten).
- ``replay``: experience replay (Chaudhry et al., "On Tiny Episodic Memories in Continual Learning", 2019,
  arXiv:1902.10486): every step mixes images from a fixed-size `ReplayBuffer` of earlier stages into the
  new stage's batch; after the stage its images are offered to the buffer.
- ``joint``: every step draws from all training images seen so far (replay with an unbounded buffer; the
  upper bound of the fine-tuning strategies).
- ``prototypes``: nearest class mean on a fixed backbone (Rebuffi et al., "iCaRL", CVPR 2017, classify by
  nearest mean of exemplars; Snell et al. 2017): a stage only appends its classes' mean features, so
  nothing learnt before ever changes.

The fine-tuning strategies share `GrowingClassifier` (backbone + linear head, grown by one row per new
class) and train each stage through the one loop, `medmeta.train.loop.fit`, with `StageBatches`.

Example:
    >>> learner = make_learner("replay", backbone, cfg, prepare=norm, image_shape=(3, 32, 32), seed=0,
    ...                        policy="reservoir")  # doctest: +SKIP
    >>> learner.learn(images, labels, n_seen=8); logits = learner.logits(norm(test_images))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medmeta.config import ContinualConfig, TrainConfig
from medmeta.config.continual import BufferPolicy, Strategy
from medmeta.methods.functional import compute_prototypes, embed, prototype_logits
from medmeta.train.loop import fit, resolve_device
from medmeta.train.replay import ReplayBuffer
from medmeta.train.supervised import batch_indices, random_flips

Prepare = Callable[[Tensor], Tensor]


def sub_seed(*parts: int) -> int:
    """A 32-bit seed derived from integer `parts` (independent streams per run seed and stage)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class ContinualLearner(Protocol):
    """What the continual run drives: learn a stage, then score images over every class seen so far."""

    def learn(self, images: Tensor, labels: Tensor, n_seen: int) -> None:
        """Learn a stage from uint8 images ``(n, C, H, W)`` and global class ids ``(n,)`` int64; afterwards
        the learner covers classes ``0..n_seen-1``."""
        ...

    def logits(self, images: Tensor) -> Tensor:
        """Prepared float images ``(N, C, H, W)`` -> ``(N, n_seen)``."""
        ...


class GrowingClassifier(nn.Module):
    """A backbone and a linear head over every class seen so far; `grow` appends rows for new classes.

    Args:
        backbone: ``(N, C, H, W)`` -> ``(N, width)``.
        width: feature width.
        train_backbone: False keeps the backbone fixed (no gradient, always in eval mode).

    Example:
        >>> from medmeta.models import Conv4
        >>> net = GrowingClassifier(Conv4(in_channels=3, image_size=32), width=256)
        >>> net.grow(8, torch.Generator().manual_seed(0))  # stage 1: 8 classes
        >>> net.grow(12, torch.Generator().manual_seed(1))  # stage 2: 4 more; rows 0..7 unchanged
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 12])
    """

    def __init__(self, backbone: nn.Module, width: int, *, train_backbone: bool = True) -> None:
        super().__init__()
        self.backbone, self.width, self.train_backbone = backbone, width, train_backbone
        self.weight = nn.Parameter(torch.zeros(0, width))  # (n_classes, width)
        self.bias = nn.Parameter(torch.zeros(0))  # (n_classes,)
        self.backbone.requires_grad_(train_backbone)

    @property
    def n_classes(self) -> int:
        return int(self.weight.shape[0])

    def grow(self, n_seen: int, generator: torch.Generator) -> None:
        """Extend the head to `n_seen` classes; new rows are drawn like ``nn.Linear``'s, ``U(+-1/sqrt(width))``."""
        new = n_seen - self.n_classes
        if new < 0:
            raise ValueError(f"the head covers {self.n_classes} classes; it cannot shrink to {n_seen}")
        bound = self.width**-0.5
        weight = (torch.rand(new, self.width, generator=generator) * 2 - 1) * bound  # (new, width)
        bias = (torch.rand(new, generator=generator) * 2 - 1) * bound  # (new,)
        with torch.no_grad():
            self.weight = nn.Parameter(torch.cat([self.weight, weight.to(self.weight)]))  # (n_seen, width)
            self.bias = nn.Parameter(torch.cat([self.bias, bias.to(self.bias)]))  # (n_seen,)

    def forward(self, images: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> logits ``(N, n_classes)``."""
        return F.linear(embed(self.backbone, images), self.weight, self.bias)

    def train(self, mode: bool = True) -> GrowingClassifier:
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()
        return self

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Nothing depends on the epoch (`medmeta.train.loop.fit` calls it)."""


class StageBatches:
    """One stage's training batches (a `medmeta.train.loop.BatchSource`): `batch_size` new images plus
    `memory_batch` images of `memory`, each drawn by `batch_indices` (seeded permutations), flipped at random.

    Args:
        images: the stage's uint8 images ``(n, C, H, W)``; labels ``(n,)`` global ids.
        memory: earlier images mixed in, ``((m, C, H, W) uint8, (m,) ids)``, or None.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        memory: tuple[Tensor, Tensor] | None,
        *,
        steps: int,
        batch_size: int,
        memory_batch: int,
        seed: int,
        prepare: Prepare,
        flip: bool,
    ) -> None:
        self.images, self.labels, self.memory = images, labels, memory
        self.steps_per_epoch = steps
        self.batch_size, self.memory_batch = batch_size, memory_batch
        self.seed, self.prepare, self.flip = seed, prepare, flip

    def batch(self, index: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Prepared images ``(B, C, H, W)`` and labels ``(B,)`` on `device`."""
        pick = torch.from_numpy(batch_indices(len(self.labels), self.batch_size, self.seed, index))
        images, labels = [self.images[pick]], [self.labels[pick]]
        if self.memory is not None and len(self.memory[1]):
            mem_images, mem_labels = self.memory
            mem = torch.from_numpy(batch_indices(len(mem_labels), self.memory_batch, self.seed + 1, index))
            images.append(mem_images[mem])
            labels.append(mem_labels[mem])
        x = self.prepare(torch.cat(images).to(device))  # (B, C, H, W)
        if self.flip:
            x = random_flips(x, self.seed, index)
        return x, torch.cat(labels).to(device)

    def loss(self, method: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        images, labels = batch
        return F.cross_entropy(method(images), labels)

    def after_epoch(self, method: nn.Module, device: torch.device) -> None:
        """Nothing derived from the data to refresh."""


Memory = Literal["none", "buffer", "all"]
#: what each fine-tuning strategy mixes into a stage's batches
MEMORY: dict[str, Memory] = {"naive": "none", "replay": "buffer", "joint": "all"}


class FinetuneLearner:
    """naive (`memory` ``none``), replay (``buffer``) or joint (``all``) fine-tuning of a `GrowingClassifier`.

    Each stage: grow the head, then ``cfg.train.steps`` Adam steps (a fresh optimiser) on batches of the
    new images plus, for replay and joint, as many earlier images (`StageBatches`); then the stage's images
    join the memory (replay: offered to the buffer in a seeded order).
    """

    def __init__(
        self,
        net: GrowingClassifier,
        cfg: ContinualConfig,
        *,
        memory: Memory,
        prepare: Prepare,
        seed: int,
        policy: BufferPolicy = "class_balanced",
    ) -> None:
        self.net, self.cfg, self.kind, self.prepare, self.seed = net, cfg, memory, prepare, seed
        self.buffer = ReplayBuffer(cfg.replay.buffer, policy, seed) if memory == "buffer" else None
        self._images: list[Tensor] = []  # every stage's images; replay reads only the buffer's ids
        self._labels: list[Tensor] = []
        self._stage = 0
        self.device = resolve_device(cfg.train.device)

    def _memory(self) -> tuple[Tensor, Tensor] | None:
        if self.kind == "none" or not self._images:
            return None
        images, labels = torch.cat(self._images), torch.cat(self._labels)
        if self.buffer is not None:
            keep = torch.from_numpy(self.buffer.items)
            return images[keep], labels[keep]
        return images, labels

    def learn(self, images: Tensor, labels: Tensor, n_seen: int) -> None:
        t, c = self._stage, self.cfg.train
        self.net.grow(n_seen, torch.Generator().manual_seed(sub_seed(self.seed, t, 1)))
        memory_batch = self.cfg.replay.batch_size or c.batch_size
        source = StageBatches(
            images,
            labels,
            self._memory(),
            steps=c.steps,
            batch_size=c.batch_size,
            memory_batch=memory_batch,
            seed=sub_seed(self.seed, t, 2),
            prepare=self.prepare,
            flip=c.flip,
        )
        train = TrainConfig(
            epochs=1,
            episodes_per_epoch=c.steps,
            lr=c.lr,
            weight_decay=c.weight_decay,
            grad_clip=c.grad_clip,
            val_episodes=0,
            seed=self.seed,
            device=c.device,
        )
        fit(self.net, source, train)
        offset = sum(len(x) for x in self._labels)
        self._images.append(images)
        self._labels.append(labels)
        if self.buffer is not None:
            order = np.random.default_rng(sub_seed(self.seed, t, 3)).permutation(len(labels))
            self.buffer.extend(offset + order, labels.numpy()[order])
        self._stage += 1

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        self.net.eval()
        return self.net(images.to(self.device))


class PrototypeLearner:
    """Nearest class mean of a fixed backbone's features; a stage appends its classes' means.

    Args:
        backbone: ``(N, C, H, W)`` -> ``(N, d)``; never trained, always in eval mode.
        distance: ``cosine`` or ``sqeuclidean``.

    Example:
        >>> learner = PrototypeLearner(backbone, "cosine", prepare=norm, device=torch.device("cpu"))  # doctest: +SKIP
        >>> learner.learn(images, labels, n_seen=8)  # class means of stage 1's shots  # doctest: +SKIP
        >>> learner.logits(norm(queries)).shape  # (N, 8); a later stage only appends rows  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: nn.Module,
        distance: Literal["cosine", "sqeuclidean"],
        *,
        prepare: Prepare,
        device: torch.device,
    ) -> None:
        self.backbone = backbone.eval().requires_grad_(False).to(device)
        self.distance, self.prepare, self.device = distance, prepare, device
        self.prototypes: Tensor | None = None  # (n_seen, d)

    @torch.no_grad()
    def learn(self, images: Tensor, labels: Tensor, n_seen: int) -> None:
        first = 0 if self.prototypes is None else len(self.prototypes)
        features = embed(self.backbone, self.prepare(images.to(self.device)))  # (n, d)
        new = compute_prototypes(features, labels.to(self.device) - first, n_seen - first)  # (n_new, d)
        self.prototypes = new if self.prototypes is None else torch.cat([self.prototypes, new])

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        assert self.prototypes is not None, "learn a stage before predicting"
        features = embed(self.backbone, images.to(self.device))  # (N, d)
        return prototype_logits(features, self.prototypes, self.distance, 1.0)  # (N, n_seen)


def feature_width(backbone: nn.Module, image_shape: tuple[int, ...]) -> int:
    """The backbone's output width for one image of `image_shape` ``(C, H, W)`` (measured in eval mode)."""
    was_training = backbone.training
    with torch.no_grad():
        width = embed(backbone.eval(), torch.zeros(1, *image_shape)).shape[1]
    backbone.train(was_training)
    return int(width)


def make_learner(
    strategy: Strategy,
    backbone: nn.Module,
    cfg: ContinualConfig,
    *,
    prepare: Prepare,
    image_shape: tuple[int, ...],
    seed: int,
    policy: BufferPolicy = "class_balanced",
) -> ContinualLearner:
    """A fresh learner for `strategy` around a private copy of `backbone` (the caller's is never changed)."""
    net = copy.deepcopy(backbone)
    if strategy == "prototypes":
        return PrototypeLearner(
            net, cfg.prototypes.distance, prepare=prepare, device=resolve_device(cfg.train.device)
        )
    memory = MEMORY[strategy]
    width = feature_width(net, image_shape)
    model = GrowingClassifier(net, width, train_backbone=cfg.train.finetune == "full")
    return FinetuneLearner(model, cfg, memory=memory, prepare=prepare, seed=seed, policy=policy)


@torch.no_grad()
def predict_classes(
    learner: ContinualLearner, images: np.ndarray, *, prepare: Prepare, chunk: int = 256
) -> np.ndarray:
    """Predicted global class ids ``(N,)`` int64 of uint8 images ``(N, C, H, W)``, `chunk` at a time."""
    out = []
    for i in range(0, len(images), chunk):
        batch = prepare(torch.from_numpy(images[i : i + chunk]))  # (chunk, C, H, W)
        out.append(learner.logits(batch).argmax(1).cpu())
    return torch.cat(out).numpy().astype(np.int64)
