"""Registration as a few-shot task: episodes whose targets are image pairs (and their labels or fields).

A pair is stored as one two-channel image, channel 0 the *moving* image and channel 1 the *fixed* one, so
the episode machinery shared with classification and segmentation (`TaskEpisode`: shape checks, device
moves, image mapping) applies unchanged. A method's predictor maps pairs ``(N, 2, *spatial)`` to the
displacement ``(N, ndim, *spatial)`` (voxels) that warps the moving image onto the fixed one.

In test-time instance optimisation the support *is* the query: the method adapts on the pairs it then
registers (`PairSampler` with ``support_is_query=True``, the default).

Pairs come from a `medmeta.data.registration.RegPool` in one of three ways (``mode``):

* ``synthetic``: ``fixed = warp(moving, u)`` with a smooth random field ``u``
  (`medmeta.data.deformations.random_smooth_field`); ``u`` is the ground truth and the fixed labels are the
  moving labels warped by ``u`` (nearest). ``contrast="invert"`` gives the fixed image ``1 - intensity``
  (a controlled change of contrast, like T1 against T2).
* ``slices``: two different slices of one volume at most ``max_gap`` apart.
* ``subjects``: two planes from different groups (volumes or subjects); with ``match_position`` the
  partner is the plane of the other group at the nearest relative position along its volume (the same
  level of the body, for CT against MR); ``moving_from`` restricts the moving planes to groups starting
  with that prefix (``mr/``: MR moving, CT fixed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from medmeta.data.deformations import random_smooth_field, warp
from medmeta.errors import DataError
from medmeta.tasks.base import SeededSampler, TaskEpisode

if TYPE_CHECKING:
    from medmeta.data.registration import RegPool

PairMode = Literal["synthetic", "slices", "subjects"]


def check_pairs(images: Tensor, labels: Tensor | None, flows: Tensor | None, what: str) -> None:
    """Validate pairs ``(N, 2, *spatial)`` float, labels ``(N, 2, *spatial)`` int64 and fields ``(N, ndim, *spatial)``.

    Raises:
        DataError: naming `what` and the shape or type received.
    """
    if images.ndim not in (4, 5) or images.shape[1] != 2:
        raise DataError(
            f"{what} pairs must be (N, 2, H, W) or (N, 2, D, H, W) (moving, fixed), got {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise DataError(f"{what} has no pair: give at least one")
    if not images.is_floating_point():
        raise DataError(f"{what} pairs must be float, got {images.dtype}: scale them to [0, 1]")
    if labels is not None:
        if tuple(labels.shape) != tuple(images.shape):
            raise DataError(f"{what} labels must be {tuple(images.shape)}, got {tuple(labels.shape)}")
        if labels.dtype != torch.int64:
            raise DataError(f"{what} labels must be int64 label maps, got {labels.dtype}: cast with .long()")
    if flows is not None:
        expected = (images.shape[0], images.ndim - 2, *images.shape[2:])
        if tuple(flows.shape) != expected:
            raise DataError(f"{what} fields must be {expected}, got {tuple(flows.shape)}")


@dataclass(frozen=True)
class PairSupport:
    """Pairs a registration method adapts on.

    Attributes:
        images: ``(n, 2, *spatial)`` float; channel 0 moving, channel 1 fixed.
        labels: ``(n, 2, *spatial)`` int64 label maps of moving and fixed, or None.
    """

    images: Tensor
    labels: Tensor | None = None

    def __post_init__(self) -> None:
        check_pairs(self.images, self.labels, None, "support")

    @property
    def spatial_dims(self) -> int:
        return int(self.images.ndim - 2)


@dataclass(frozen=True)
class PairEpisode(TaskEpisode):
    """One registration task.

    Attributes:
        support_images: ``(n_support, 2, *spatial)`` float (moving, fixed).
        support_labels: ``(n_support, 2, *spatial)`` int64 or None.
        query_images: ``(n_query, 2, *spatial)`` float.
        query_labels: ``(n_query, 2, *spatial)`` int64 or None.
        query_flows: ``(n_query, ndim, *spatial)`` ground-truth displacements (synthetic pairs) or None.
        source: where the pairs come from, for reports (``POOL:MODE``).
    """

    support_images: Tensor
    support_labels: Tensor | None
    query_images: Tensor
    query_labels: Tensor | None
    query_flows: Tensor | None = None
    source: str = ""

    def __post_init__(self) -> None:
        check_pairs(self.support_images, self.support_labels, None, "support")
        check_pairs(self.query_images, self.query_labels, self.query_flows, "query")
        self.check_images()

    @property
    def support(self) -> PairSupport:
        return PairSupport(self.support_images, self.support_labels)


class PairSampler(SeededSampler[PairEpisode]):
    """Seeded registration episodes from a pool of real planes: episode ``i`` depends only on ``(seed, i)``.

    Example:
        >>> sampler = PairSampler(pool, "synthetic", n_query=1, seed=0, magnitude=2.0)  # doctest: +SKIP
        >>> ep = sampler.episode(0)  # ep.query_flows is the field that registers the pair
    """

    def __init__(
        self,
        pool: RegPool,
        mode: PairMode,
        *,
        n_query: int = 1,
        n_support: int = 1,
        support_is_query: bool = True,
        seed: int = 0,
        n_episodes: int = 100,
        magnitude: float = 2.0,
        control_points: int = 5,
        max_gap: int = 3,
        contrast: Literal["same", "invert"] = "same",
        match_position: bool = False,
        moving_from: str = "",
    ) -> None:
        if n_query < 1 or n_support < 1:
            raise DataError(f"n_query and n_support must be >= 1, got {n_query} and {n_support}")
        if mode not in ("synthetic", "slices", "subjects"):
            raise DataError(f"unknown pair mode '{mode}': choose synthetic, slices or subjects")
        if mode == "subjects" and len(set(pool.groups)) < 2:
            raise DataError(f"pool '{pool.name}' has one group: 'subjects' pairs need two or more")
        if mode == "slices" and (max_gap < 1 or not self._slice_partners(pool, max_gap)):
            raise DataError(f"pool '{pool.name}' has no two slices of one group within max_gap={max_gap}")
        self.pool, self.mode, self.contrast = pool, mode, contrast
        self.n_query, self.n_support, self.support_is_query = n_query, n_support, support_is_query
        self.seed, self.n_episodes = seed, n_episodes
        self.magnitude, self.control_points, self.max_gap = magnitude, control_points, max_gap
        self.partners = self._slice_partners(pool, max_gap) if mode == "slices" else {}
        self.match_position = match_position
        self.moving_pool = [i for i, g in enumerate(pool.groups) if g.startswith(moving_from)]
        if not self.moving_pool:
            raise DataError(
                f"no plane of pool '{pool.name}' has a group starting with moving_from='{moving_from}'"
            )
        extent = {
            g: max(p for h, p in zip(pool.groups, pool.positions, strict=True) if h == g) for g in pool.groups
        }
        self.relative = [p / max(extent[g], 1) for g, p in zip(pool.groups, pool.positions, strict=True)]

    @staticmethod
    def _slice_partners(pool: RegPool, max_gap: int) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i in range(len(pool)):
            near = [
                j
                for j in range(len(pool))
                if j != i
                and pool.groups[j] == pool.groups[i]
                and abs(pool.positions[j] - pool.positions[i]) <= max_gap
            ]
            if near:
                out[i] = near
        return out

    def _pairs(self, rng: np.random.Generator, n: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``n`` pairs ``(n, 2, *spatial)``, labels ``(n, 2, *spatial)`` or None, fields or None."""
        pool = self.pool
        if self.mode == "synthetic":
            moving_idx = rng.integers(len(pool), size=n)
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            flows = random_smooth_field(
                tuple(pool.images.shape[2:]),
                magnitude=self.magnitude,
                control_points=self.control_points,
                generator=gen,
                n=n,
            )  # (n, ndim, *spatial)
            moving = pool.images[torch.as_tensor(moving_idx)]  # (n, 1, *spatial)
            fixed = warp(moving, flows)
            if self.contrast == "invert":
                fixed = 1.0 - fixed
            images = torch.cat([moving, fixed], 1)  # (n, 2, *spatial)
            labels = None
            if pool.labels is not None:
                lm = pool.labels[torch.as_tensor(moving_idx)][:, None]  # (n, 1, *spatial)
                lf = warp(lm.float(), flows, mode="nearest").round().long()
                labels = torch.cat([lm, lf], 1)
            return images, labels, flows
        keys = sorted(self.partners)
        pairs: list[tuple[int, int]] = []
        for _ in range(n):
            if self.mode == "slices":
                a = keys[int(rng.integers(len(keys)))]
                b = self.partners[a][int(rng.integers(len(self.partners[a])))]
            else:
                a = self.moving_pool[int(rng.integers(len(self.moving_pool)))]
                others = [j for j in range(len(pool)) if pool.groups[j] != pool.groups[a]]
                if self.match_position:
                    b = min(others, key=lambda j: abs(self.relative[j] - self.relative[a]))
                else:
                    b = others[int(rng.integers(len(others)))]
            pairs.append((a, b))
        idx = torch.as_tensor(pairs)  # (n, 2): moving, fixed
        images = pool.images[idx[:, 0]].clone()
        images = torch.cat([images, pool.images[idx[:, 1]]], 1)  # (n, 2, *spatial)
        labels = (
            None if pool.labels is None else torch.stack([pool.labels[idx[:, 0]], pool.labels[idx[:, 1]]], 1)
        )
        return images, labels, None

    def episode(self, index: int) -> PairEpisode:
        rng = np.random.default_rng([self.seed, index])
        images, labels, flows = self._pairs(rng, self.n_query)
        if self.support_is_query:
            s_images, s_labels = images, labels
        else:
            s_images, s_labels, _ = self._pairs(rng, self.n_support)
        return PairEpisode(s_images, s_labels, images, labels, flows, f"{self.pool.name}:{self.mode}")


class InterleavedSampler(SeededSampler[PairEpisode]):
    """Episodes of several samplers in turn: episode ``i`` is ``samplers[i % k].episode(i // k)``.

    For training on a mixture of pools and pair modes.
    """

    def __init__(self, samplers: list[PairSampler], n_episodes: int = 1000) -> None:
        if not samplers:
            raise DataError("InterleavedSampler needs at least one sampler")
        self.samplers, self.n_episodes, self.seed = samplers, n_episodes, samplers[0].seed

    def episode(self, index: int) -> PairEpisode:
        k = len(self.samplers)
        return self.samplers[index % k].episode(index // k)
