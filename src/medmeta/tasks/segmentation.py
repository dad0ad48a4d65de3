"""Segmentation as a few-shot task: 1-way K-shot episodes whose targets are masks, and their sampler.

An episode holds K support (image, binary mask) pairs of one structure and query images of the same
structure (with masks for training and scoring). Structures play the role of classes: the training
structures and the test structures of a protocol are disjoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

from medmeta.errors import DataError
from medmeta.tasks.base import SeededSampler, TaskEpisode

if TYPE_CHECKING:
    from medmeta.data.segmentation.sources import SegStructure


def check_pairs(images: Tensor, masks: Tensor | None, what: str) -> None:
    """Validate ``(N, C, H, W)`` images and ``(N, H, W)`` binary masks; raise `DataError` naming `what`."""
    if images.ndim != 4:
        raise DataError(f"{what} images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise DataError(f"{what} has no image: give at least one")
    if not images.is_floating_point():
        raise DataError(f"{what} images must be float, got {images.dtype}")
    if masks is None:
        return
    expected = (images.shape[0], *images.shape[2:])
    if tuple(masks.shape) != expected:
        raise DataError(f"{what} masks must be (N, H, W) = {expected}, got {tuple(masks.shape)}")
    if masks.numel() and not bool(((masks == 0) | (masks == 1)).all()):
        raise DataError(f"{what} masks must be binary (0/1): threshold them first")


def check_support(images: Tensor, masks: Tensor, structure: str = "") -> None:
    """Validate support pairs: `check_pairs`, and every mask must contain foreground.

    Raises:
        DataError: naming the empty shots and the structure.
    """
    check_pairs(images, masks, "support")
    empty = [i for i in range(masks.shape[0]) if not bool(masks[i].any())]
    if empty:
        name = f" of '{structure}'" if structure else ""
        raise DataError(f"support mask(s) {empty}{name} are empty: every shot needs foreground")


@dataclass(frozen=True)
class MaskSupport:
    """Annotated images a segmenter adapts on (the segmentation counterpart of `medmeta.tasks.episode.Support`).

    Attributes:
        images: ``(n_shot, C, H, W)`` float.
        masks: ``(n_shot, H, W)`` float in ``{0, 1}``; each contains foreground.
        structure: name of the structure, for messages (``SOURCE:STRUCTURE``; may be empty).
    """

    images: Tensor
    masks: Tensor
    structure: str = ""

    def __post_init__(self) -> None:
        check_support(self.images, self.masks, self.structure)

    @property
    def n_shot(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class SegEpisode(TaskEpisode):
    """One 1-way K-shot segmentation task.

    Attributes:
        support_images: ``(n_shot, C, H, W)`` float.
        support_masks: ``(n_shot, H, W)`` float in ``{0, 1}``; each must contain foreground.
        query_images: ``(n_query, C, H, W)`` float.
        query_masks: ``(n_query, H, W)`` float in ``{0, 1}``, or None when only predicting.
        structure: name of the structure (``SOURCE:STRUCTURE``).
    """

    support_images: Tensor
    support_masks: Tensor
    query_images: Tensor
    query_masks: Tensor | None
    structure: str = ""

    def __post_init__(self) -> None:
        check_support(self.support_images, self.support_masks, self.structure)
        check_pairs(self.query_images, self.query_masks, "query")
        self.check_images()

    @property
    def n_shot(self) -> int:
        return int(self.support_images.shape[0])

    @property
    def support(self) -> MaskSupport:
        return MaskSupport(self.support_images, self.support_masks, self.structure)


EpisodeSource = Callable[[int], SegEpisode]


class SegEpisodeSampler(SeededSampler[SegEpisode]):
    """Seeded 1-way episodes over structures: episode ``i`` depends only on ``(seed, i)``.

    The structure of episode ``i`` is drawn uniformly; support and query samples are distinct, and query
    samples come from other source images/volumes (groups) than the support when enough exist.

    Example:
        >>> sampler = SegEpisodeSampler(structures, n_shot=1, n_query=2, seed=0)  # doctest: +SKIP
        >>> ep = sampler.episode(0)  # the same episode every time
    """

    def __init__(
        self,
        structures: Mapping[str, SegStructure],
        n_shot: int,
        n_query: int,
        seed: int = 0,
        *,
        n_episodes: int = 100,
    ) -> None:
        if n_shot < 1 or n_query < 1:
            raise DataError(f"n_shot and n_query must be >= 1, got {n_shot} and {n_query}")
        if not structures:
            raise DataError("no structure to sample episodes from")
        small = {k: len(s) for k, s in structures.items() if len(s) < n_shot + n_query}
        if small:
            raise DataError(
                f"structure(s) with fewer than n_shot + n_query = {n_shot + n_query} samples: {small}; "
                "lower n_shot/n_query or min_pixels, or drop them"
            )
        self.structures = dict(structures)
        self.names = sorted(self.structures)
        self.n_shot, self.n_query, self.seed, self.n_episodes = n_shot, n_query, seed, n_episodes

    def episode(self, index: int) -> SegEpisode:
        rng = np.random.default_rng([self.seed, index])
        name = self.names[int(rng.integers(len(self.names)))]
        s = self.structures[name]
        order = rng.permutation(len(s))
        support = order[: self.n_shot]
        support_groups = {s.groups[i] for i in support}
        rest = order[self.n_shot :]
        other = [i for i in rest if s.groups[i] not in support_groups]
        pool = other if len(other) >= self.n_query else list(rest)
        query = np.asarray(pool[: self.n_query])
        return SegEpisode(
            s.images[support].clone(),
            s.masks[support].clone(),
            s.images[query].clone(),
            s.masks[query].clone(),
            name,
        )
