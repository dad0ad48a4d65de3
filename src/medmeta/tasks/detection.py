"""Detection as a few-shot task: targets are boxes, and a novel class is learnt from K annotated images.

Protocol (TFA, Wang et al. 2020): a detector is trained on the base classes with all their boxes; a
novel class is then learnt from a balanced K-shot set, and every class is scored on held-out images.
`KShotDetSampler` draws K images that contain each novel class, then tops every base class up to K
images that contain it (every box of a drawn image is kept), with a seed: episode ``i`` is draw ``i``.

Images are ``(N, 3, H, W)`` (uint8 from the data layer, or float in ``[0, 1]``); the boxes of image ``i``
are ``(n_i, 4)`` float ``xmin, ymin, xmax, ymax`` in its pixels and its labels ``(n_i,)`` int64 indices
into the episode's ``classes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from medmeta.errors import DataError
from medmeta.tasks.base import SeededSampler, TaskEpisode


def check_boxes(
    images: Tensor, boxes: Sequence[Tensor], labels: Sequence[Tensor], n_classes: int, what: str
) -> None:
    """Validate ``(N, 3, H, W)`` images with N box tensors ``(n_i, 4)`` and N label tensors ``(n_i,)``.

    Raises:
        DataError: naming `what` and the first problem.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"{what} images must be (N, 3, H, W), got shape {tuple(images.shape)}")
    n = images.shape[0]
    if len(boxes) != n or len(labels) != n:
        raise DataError(f"{what} has {n} images but {len(boxes)} box sets and {len(labels)} label sets")
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        if b.ndim != 2 or b.shape[1] != 4 or lab.shape != (b.shape[0],):
            raise DataError(
                f"{what} image {i}: boxes must be (n, 4) and labels (n,), got {tuple(b.shape)} and "
                f"{tuple(lab.shape)}"
            )
        if lab.dtype != torch.int64:
            raise DataError(f"{what} image {i}: labels must be int64, got {lab.dtype}: cast with .long()")
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= n_classes):
            raise DataError(f"{what} image {i}: labels must lie in 0..{n_classes - 1}, got {lab.tolist()}")
        if b.numel() and not bool(((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()):
            raise DataError(f"{what} image {i}: every box needs xmax > xmin and ymax > ymin")


@dataclass(frozen=True)
class BoxSupport:
    """Annotated images a detector adapts on (the detection counterpart of `medmeta.tasks.episode.Support`).

    Attributes:
        images: ``(K, 3, H, W)`` uint8 or float in ``[0, 1]``.
        boxes: K tensors ``(n_i, 4)`` ``xmin, ymin, xmax, ymax`` in pixels.
        labels: K tensors ``(n_i,)`` int64 indices into `classes`.
        classes: every class name of the task; the detector's base classes and the novel ones.
        novel: indices of the classes to learn from this support; each has at least one box.
    """

    images: Tensor
    boxes: tuple[Tensor, ...]
    labels: tuple[Tensor, ...]
    classes: tuple[str, ...]
    novel: tuple[int, ...]

    def __post_init__(self) -> None:
        check_boxes(self.images, self.boxes, self.labels, len(self.classes), "support")
        present = set(torch.cat([*self.labels, torch.zeros(0, dtype=torch.int64)]).tolist())
        missing = [self.classes[c] for c in self.novel if c not in present]
        if missing:
            raise DataError(
                f"support has no box of novel class(es) {missing}: every novel class needs >= 1 box"
            )

    @property
    def n_shot(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class DetEpisode(TaskEpisode):
    """One K-shot detection task: support images with boxes, query images (with boxes to score).

    Attributes:
        support_images: ``(K, 3, H, W)``; support_boxes / support_labels as in `BoxSupport`.
        query_images: ``(n_query, 3, H, W)``; query_boxes / query_labels likewise.
        classes: class names (labels index them); novel: indices of the classes learnt from the support.
    """

    support_images: Tensor
    support_boxes: tuple[Tensor, ...]
    support_labels: tuple[Tensor, ...]
    query_images: Tensor
    query_boxes: tuple[Tensor, ...]
    query_labels: tuple[Tensor, ...]
    classes: tuple[str, ...]
    novel: tuple[int, ...]

    def __post_init__(self) -> None:
        check_boxes(self.query_images, self.query_boxes, self.query_labels, len(self.classes), "query")
        self.check_images()
        _ = self.support  # validates the support side

    @property
    def support(self) -> BoxSupport:
        return BoxSupport(
            self.support_images, self.support_boxes, self.support_labels, self.classes, self.novel
        )

    @property
    def base(self) -> tuple[int, ...]:
        """Indices of the classes that are not novel."""
        return tuple(i for i in range(len(self.classes)) if i not in self.novel)


class KShotDetSampler(SeededSampler[DetEpisode]):
    """Seeded balanced K-shot draws: K pool images per novel class, then base classes topped up to K images.

    The query set is fixed. A base class held by fewer than K pool images gets all of them.

    Example:
        >>> sampler = KShotDetSampler(pool, query, classes=("RBC", "WBC"), novel=(1,), n_shot=5)  # doctest: +SKIP
        >>> ep = sampler.episode(0)  # draw 0, the same every time
    """

    def __init__(
        self,
        pool: tuple[Tensor, Sequence[Tensor], Sequence[Tensor]],
        query: tuple[Tensor, Sequence[Tensor], Sequence[Tensor]],
        classes: Sequence[str],
        novel: Sequence[int],
        n_shot: int,
        seed: int = 0,
        *,
        n_episodes: int = 3,
    ) -> None:
        """Args:
        pool: images ``(P, 3, H, W)``, boxes and labels the support is drawn from.
        query: held-out images ``(Q, 3, H, W)``, boxes and labels (the same in every episode).
        classes, novel: as in `DetEpisode`.
        n_shot: K, images per novel class.
        seed, n_episodes: draw ``i`` uses ``(seed, i)``.
        """
        if n_shot < 1:
            raise DataError(f"n_shot must be >= 1, got {n_shot}")
        if not novel:
            raise DataError("no novel class: name at least one class to learn from K shots")
        self.classes, self.novel = tuple(classes), tuple(novel)
        check_boxes(pool[0], pool[1], pool[2], len(self.classes), "pool")
        check_boxes(query[0], query[1], query[2], len(self.classes), "query")
        self.pool, self.query = pool, query
        self.holders = {
            c: [i for i, lab in enumerate(pool[2]) if bool((lab == c).any())]
            for c in range(len(self.classes))
        }
        short = {self.classes[c]: len(self.holders[c]) for c in self.novel if len(self.holders[c]) < n_shot}
        if short:
            raise DataError(f"fewer than K = {n_shot} pool images hold novel class(es) {short}: lower K")
        self.n_shot, self.seed, self.n_episodes = n_shot, seed, n_episodes

    def draw(self, index: int) -> list[int]:
        """Pool indices of draw `index`: K distinct images per novel class, then for each base class images
        that hold it until K of the drawn images do (in draw order)."""
        rng = np.random.default_rng([self.seed, index])
        chosen: list[int] = []
        for c in self.novel:
            free = [i for i in self.holders[c] if i not in chosen]
            if len(free) < self.n_shot:
                raise DataError(
                    f"not enough distinct pool images for K = {self.n_shot} shots of each novel class"
                )
            chosen += [free[int(j)] for j in rng.choice(len(free), self.n_shot, replace=False)]
        for c in range(len(self.classes)):
            if c in self.novel:
                continue
            have = sum(1 for i in chosen if i in self.holders[c])
            free = [i for i in self.holders[c] if i not in chosen]
            need = min(max(self.n_shot - have, 0), len(free))
            chosen += [free[int(j)] for j in rng.choice(len(free), need, replace=False)] if need else []
        return chosen

    def episode(self, index: int) -> DetEpisode:
        idx = self.draw(index)
        images, boxes, labels = self.pool
        q_images, q_boxes, q_labels = self.query
        return DetEpisode(
            images[idx].clone(),
            tuple(boxes[i] for i in idx),
            tuple(labels[i] for i in idx),
            q_images,
            tuple(q_boxes),
            tuple(q_labels),
            self.classes,
            self.novel,
        )
