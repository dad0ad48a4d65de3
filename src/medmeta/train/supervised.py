"""Supervised pretraining on the union of training images: the batch source of the transfer baselines.

`SupervisedBatches` feeds `medmeta.train.loop.fit` (the one training loop: optimiser, schedule, AMP,
`step`, NaN check, validation, checkpoints, resume) with mini-batches of labelled images instead of
episodes; `fit_supervised` sets the method's heads up and runs it. An epoch is ``cfg.episodes_per_epoch`` mini-batches of ``options.batch_size``
images, so a supervised run takes as many optimiser steps as an episodic run with ``meta_batch=1``.
Mini-batches walk through seeded permutations of the union set: batch ``b`` depends only on
``(seed, b)``, and every image is seen once per pass.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmeta.config import TrainConfig
from medmeta.data.datasets import ImageDataset, check_training_domains
from medmeta.methods.base import FewShotMethod
from medmeta.methods.transfer.base import SupervisedMethod
from medmeta.train.loop import FitResult, ProgressHook, Validation, fit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledImages:
    """The training domains as one labelled set, without copying their images.

    Attributes:
        datasets: the training domains (equal image shapes).
        offsets: ``(n_domains + 1,)`` start of each domain in the global index.
        per_domain: True: each domain keeps its own labels and head; False: one union label space.
        head_sizes: classes per head (one entry for the union label space).
        class_names: ``domain/class`` names of every head's classes, head by head.
    """

    datasets: tuple[ImageDataset, ...]
    offsets: np.ndarray
    per_domain: bool
    head_sizes: tuple[int, ...]
    class_names: tuple[str, ...]

    @classmethod
    def build(cls, datasets: Sequence[ImageDataset], *, per_domain: bool = False) -> LabelledImages:
        """Label space over `datasets`: the union (class ``c`` of domain ``k`` -> ``sum(n_j, j<k) + c``).

        Raises:
            DataError: no dataset, or datasets whose image shapes differ.
        """
        check_training_domains(datasets)
        sizes = [d.n_classes for d in datasets]
        names = tuple(f"{d.display_name}/{c}" for d in datasets for c in d.class_names)
        return cls(
            datasets=tuple(datasets),
            offsets=np.cumsum([0, *(len(d) for d in datasets)]),
            per_domain=per_domain,
            head_sizes=tuple(sizes) if per_domain else (sum(sizes),),
            class_names=names,
        )

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def gather(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images ``(n, C, *spatial)`` uint8, labels ``(n,)`` and heads ``(n,)`` of global indices `index`."""
        domain = np.searchsorted(self.offsets, index, side="right") - 1  # (n,)
        images, labels, heads = [], [], []
        for k in np.unique(domain):
            local = index[domain == k] - self.offsets[k]
            ds = self.datasets[k]
            images.append(ds.images[local])
            offset = 0 if self.per_domain else sum(d.n_classes for d in self.datasets[:k])
            labels.append(ds.labels[local].astype(np.int64) + offset)
            heads.append(np.full(len(local), k if self.per_domain else 0, dtype=np.int64))
        return (
            torch.from_numpy(np.concatenate(images)),
            torch.from_numpy(np.concatenate(labels)),
            torch.from_numpy(np.concatenate(heads)),
        )


def batch_indices(n: int, batch_size: int, seed: int, batch: int) -> np.ndarray:
    """Global indices of mini-batch `batch`: positions ``[b*B, (b+1)*B)`` of a stream of permutations.

    Pass ``p`` of the stream is ``default_rng((seed, p)).permutation(n)``; a batch may span two passes.

    Returns:
        ``(min(batch_size, n),)`` int64 indices.
    """
    size = min(batch_size, n)
    start = batch * size
    out: list[int] = []
    while len(out) < size:
        p, offset = divmod(start + len(out), n)
        perm = np.random.default_rng((seed, p)).permutation(n)
        out.extend(perm[offset : offset + size - len(out)].tolist())
    return np.asarray(out, dtype=np.int64)


def random_flips(images: torch.Tensor, seed: int, batch: int) -> torch.Tensor:
    """Flip each image along each spatial axis with probability 1/2, seeded by ``(seed, batch)``.

    Args:
        images: ``(n, C, *spatial)``.
    """
    rng = np.random.default_rng((seed, batch, 2))
    spatial = images.ndim - 2
    masks = torch.from_numpy(rng.random((spatial, images.shape[0])) < 0.5)  # (spatial, n)
    for axis in range(spatial):
        m = masks[axis].to(images.device).view(-1, *([1] * (images.ndim - 1)))  # (n, 1, ...)
        images = torch.where(m, images.flip(2 + axis), images)
    return images


@torch.no_grad()
def training_feature_mean(
    method: SupervisedMethod,
    data: LabelledImages,
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    max_images: int,
    seed: int,
    chunk: int = 256,
) -> torch.Tensor:
    """Mean backbone feature ``(d,)`` over up to `max_images` training images (seeded choice), eval mode."""
    n = len(data)
    pick = np.sort(np.random.default_rng((seed, 3)).choice(n, min(n, max_images), replace=False))
    was_training = method.training
    method.eval()
    total = torch.zeros(method.width, dtype=torch.float64, device=device)
    try:
        for i in range(0, len(pick), chunk):
            images, _, _ = data.gather(pick[i : i + chunk])
            total += method.features(prepare(images.to(device))).double().sum(0)
    finally:
        method.train(was_training)
    return (total / len(pick)).float()


def _record_heads(
    meta: dict[str, Any] | None, method: SupervisedMethod, data: LabelledImages
) -> dict[str, Any]:
    """Checkpoint meta whose stored config rebuilds the heads (``method.options.head_sizes``)."""
    out = copy.deepcopy(meta or {})
    config = out.get("config")
    if isinstance(config, dict):
        options = config.setdefault("method", {}).setdefault("options", {})
        options["head_sizes"] = list(method.options.head_sizes)
    out["pretrain"] = {
        "label_space": method.options.label_space,
        "head_sizes": list(method.options.head_sizes),
        "classes": list(data.class_names),
        "images": len(data),
    }
    return out


class SupervisedBatches:
    """Seeded mini-batches of labelled images for a `SupervisedMethod` (a `medmeta.train.loop.BatchSource`).

    An epoch is ``cfg.episodes_per_epoch`` mini-batches of ``options.batch_size`` images (see the module
    docstring), flipped at random when ``options.flip``; the loss is the method's ``supervised_loss``.
    After every epoch the method's ``feature_mean`` is recomputed from up to ``options.mean_images``
    training images.
    """

    def __init__(
        self,
        method: SupervisedMethod,
        data: LabelledImages,
        cfg: TrainConfig,
        *,
        prepare: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        self.options = method.options
        self.data, self.seed, self.prepare = data, cfg.seed, prepare
        self.steps_per_epoch = cfg.episodes_per_epoch

    def batch(self, index: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images ``(B, C, *spatial)`` (prepared, flipped), labels ``(B,)`` and heads ``(B,)`` on `device`."""
        pick = batch_indices(len(self.data), self.options.batch_size, self.seed, index)
        images, labels, heads = self.data.gather(pick)
        images = self.prepare(images.to(device))
        if self.options.flip:
            images = random_flips(images, self.seed, index)
        return images, labels.to(device), heads.to(device)

    def loss(
        self, method: SupervisedMethod, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        return method.supervised_loss(*batch)

    def after_epoch(self, method: SupervisedMethod, device: torch.device) -> None:
        method.feature_mean.copy_(
            training_feature_mean(
                method,
                self.data,
                prepare=self.prepare,
                device=device,
                max_images=self.options.mean_images,
                seed=self.seed,
            )
        )


def fit_supervised(
    method: FewShotMethod,
    train_sets: Sequence[ImageDataset],
    cfg: TrainConfig,
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    validation: Validation | None = None,
    out_dir: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    progress: ProgressHook | None = None,
    resume: bool = False,
    save_state: bool = True,
    on_start: Callable[[], None] | None = None,
) -> FitResult:
    """Pretrain `method` with cross-entropy on all training classes; keep the best validation checkpoint.

    Args:
        method: a transfer baseline (`SupervisedMethod`); its pretraining heads are created here.
        train_sets: training domains (their union is the training set).
        cfg: ``epochs`` x ``episodes_per_epoch`` mini-batches; Adam ``lr``/``weight_decay``,
            ``grad_clip``, ``lr_schedule``, ``seed``, ``device``, ``amp`` as in `fit`.
        prepare: uint8 images -> normalised float images.
        validation: scores the method after every epoch with its own `adapt`
            (`medmeta.eval.evaluate.AccuracyValidation`); None: the last epoch is kept.
        out_dir: where ``best.json``/``last.json`` checkpoints and ``history.json`` go (None: not saved).
        meta: JSON stored in the checkpoints; its ``config`` gains ``method.options.head_sizes``.
        progress: progress receiver.
        resume: continue from ``out_dir``'s training state, as in `fit`.
        save_state: write the training state after every epoch, as in `fit`.
        on_start: called before the first training step, as in `fit`.

    Returns:
        The history and checkpoint paths; `method` ends holding the best weights.

    Raises:
        TypeError: `method` is not a `SupervisedMethod`.
        TrainingError: the loss became NaN/inf (checkpoints already written are kept).
    """
    if not isinstance(method, SupervisedMethod):
        raise TypeError(
            f"fit_supervised trains transfer baselines (SupervisedMethod), got {type(method).__name__}: "
            "use medmeta.train.loop.fit for episodic methods"
        )
    data = LabelledImages.build(train_sets, per_domain=method.options.label_space == "per_domain")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        method.set_head_sizes(data.head_sizes)
    return fit(
        method,
        SupervisedBatches(method, data, cfg, prepare=prepare),
        cfg,
        validation=validation,
        out_dir=out_dir,
        meta=_record_heads(meta, method, data),
        progress=progress,
        resume=resume,
        save_state=save_state,
        on_start=on_start,
    )
