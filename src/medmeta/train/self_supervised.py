"""Self-supervised pretraining batches: random views of unlabelled images for `medmeta.train.loop.fit`.

`UnlabelledImages` pools the images of several domains (any source medmeta reads; their labels are never
used). `ViewBatches` draws mini-batches from seeded permutations of the pool (as
`medmeta.train.supervised.batch_indices` does: batch ``b`` depends only on ``(seed, b)``) and makes two
global views of each image, plus DINO's local views, with a `torch.Generator` seeded by ``(seed, b)``: a
resumed run sees exactly the batches of an uninterrupted one. The loss is the method's ``batch_loss``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from medmeta.config import PretrainConfig
from medmeta.data.augment import ViewAugment
from medmeta.data.datasets import ImageDataset, check_training_domains
from medmeta.errors import DataError
from medmeta.methods.self_supervised.base import SelfSupervisedMethod
from medmeta.train.supervised import batch_indices


def generator_for(seed: int, index: int) -> torch.Generator:
    """A CPU generator whose state depends only on ``(seed, index)``."""
    (state,) = np.random.SeedSequence([seed, index, 17]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state) >> 1)


@dataclass(frozen=True)
class UnlabelledImages:
    """Images of several domains as one pool, without copying them.

    Attributes:
        datasets: the domains (equal 2-D image shapes).
        offsets: ``(n_domains + 1,)`` start of each domain in the pooled index.
        pick: ``(n,)`` pooled indices in use (all, or a seeded choice of ``max_images``), ascending.
    """

    datasets: tuple[ImageDataset, ...]
    offsets: np.ndarray
    pick: np.ndarray

    @classmethod
    def build(
        cls, datasets: Sequence[ImageDataset], *, max_images: int | None = None, seed: int = 0
    ) -> UnlabelledImages:
        """Pool `datasets`; with `max_images`, keep a seeded choice of that many images.

        Raises:
            DataError: no dataset, 3-D volumes, image shapes that differ, or fewer than 2 images.
        """
        check_training_domains(datasets)
        for ds in datasets:
            if ds.spatial_dims != 2:
                raise DataError(
                    f"{ds.display_name} holds 3-D volumes {ds.image_shape}: self-supervised pretraining takes "
                    "2-D images; name 2-D domains"
                )
        offsets = np.cumsum([0, *(len(d) for d in datasets)])
        n = int(offsets[-1])
        pick = np.arange(n, dtype=np.int64)
        if max_images is not None and max_images < n:
            pick = np.sort(np.random.default_rng((seed, 5)).choice(n, max_images, replace=False))
        if len(pick) < 2:
            raise DataError("self-supervised pretraining needs at least 2 images: name more data")
        return cls(datasets=tuple(datasets), offsets=offsets, pick=pick)

    def __len__(self) -> int:
        return len(self.pick)

    @property
    def channels(self) -> int:
        return self.datasets[0].channels

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.datasets[0].image_shape

    def images_per_domain(self) -> dict[str, int]:
        """Images in use per domain (by display name; a domain named twice adds up)."""
        domain = np.searchsorted(self.offsets, self.pick, side="right") - 1  # (n,)
        counts: dict[str, int] = {}
        for k, ds in enumerate(self.datasets):
            counts[ds.display_name] = counts.get(ds.display_name, 0) + int((domain == k).sum())
        return counts

    def gather(self, positions: np.ndarray) -> Tensor:
        """uint8 images ``(n, C, H, W)`` at `positions` of the pool, in that order."""
        index = self.pick[positions]
        domain = np.searchsorted(self.offsets, index, side="right") - 1  # (n,)
        out = np.empty((len(index), *self.image_shape), dtype=np.uint8)
        for k in np.unique(domain):
            rows = domain == k
            out[rows] = self.datasets[k].images[index[rows] - self.offsets[k]]
        return torch.from_numpy(out)


class ViewBatches:
    """Views of seeded mini-batches of unlabelled images (a `medmeta.train.loop.BatchSource`).

    Args:
        images: the pool.
        global_augment: makes the two global views.
        local_augment: makes DINO's `local_views` (small crops).
        batch_size: images per batch (at most the pool).
        steps_per_epoch: batches per epoch (None: one pass over the pool).
        seed: batch ``b`` depends only on ``(seed, b)``.
        local_views: local views per image (DINO; 0 otherwise).
        prepare: applied to every view on the device (``[0, 1]`` intensities -> normalised float).

    Example:
        >>> source = ViewBatches.from_config(images, cfg, prepare=normalization)  # doctest: +SKIP
        >>> fit(method, source, cfg.train)  # doctest: +SKIP
    """

    def __init__(
        self,
        images: UnlabelledImages,
        *,
        global_augment: ViewAugment,
        local_augment: ViewAugment,
        batch_size: int,
        steps_per_epoch: int | None,
        seed: int,
        local_views: int = 0,
        prepare: Callable[[Tensor], Tensor],
    ) -> None:
        self.images, self.seed, self.prepare = images, seed, prepare
        self.global_augment, self.local_augment, self.local_views = global_augment, local_augment, local_views
        self.batch_size = min(batch_size, len(images))
        self.size = int(images.image_shape[-1])
        self.steps_per_epoch = steps_per_epoch or -(-len(images) // self.batch_size)

    @classmethod
    def from_config(
        cls, images: UnlabelledImages, cfg: PretrainConfig, *, prepare: Callable[[Tensor], Tensor]
    ) -> ViewBatches:
        """The batches `cfg` describes (DINO gets ``ssl.local_crops`` local views)."""
        return cls(
            images,
            global_augment=ViewAugment.from_config(cfg.augment),
            local_augment=ViewAugment.from_config(cfg.augment, local=True),
            batch_size=cfg.ssl.batch_size,
            steps_per_epoch=cfg.ssl.steps_per_epoch,
            seed=cfg.train.seed,
            local_views=cfg.ssl.local_crops if cfg.ssl.method == "dino" else 0,
            prepare=prepare,
        )

    def batch(self, index: int, device: torch.device) -> list[Tensor]:
        """Batch `index`: 2 global views, then the local views, each ``(B, C, H, W)``, prepared, on `device`."""
        pick = batch_indices(len(self.images), self.batch_size, self.seed, index)
        images = self.images.gather(pick).to(device).float() / 255.0  # (B, C, H, W) in [0, 1]
        generator = generator_for(self.seed, index)
        views = [self.global_augment(images, self.size, generator) for _ in range(2)]
        views += [self.local_augment(images, self.size, generator) for _ in range(self.local_views)]
        return [self.prepare(v) for v in views]

    def loss(self, method: SelfSupervisedMethod, batch: list[Tensor]) -> Tensor:
        return method.batch_loss(batch)

    def after_epoch(self, method: Any, device: torch.device) -> None:
        """Nothing: self-supervised methods keep no statistics of the training data."""
