"""Self-supervised episodes from superpixel pseudo-labels (the self-supervision of SSL-ALPNet).

Ouyang et al., "Self-supervision with Superpixels: Training Few-shot Medical Image Segmentation without
Annotation", ECCV 2020, https://arxiv.org/abs/2007.09886. An unlabelled image is over-segmented into
superpixels; one superpixel becomes the foreground of a pseudo-episode whose support is the image and whose
query is a randomly transformed copy (geometry and intensity), so the segmenter learns to find "the same
region" without any manual label.

Superpixels here are SLIC-like (Achanta et al. 2012): k-means on ``(intensity, y, x)`` started from a
regular grid, ``compactness`` weighting position against intensity (no connectivity enforcement, so a
superpixel can have a few detached pixels). Written in torch so it needs no extra package.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medmeta.errors import DataError
from medmeta.tasks.base import SeededSampler
from medmeta.tasks.segmentation import SegEpisode


def slic_kmeans(image: Tensor, n_segments: int = 32, compactness: float = 0.3, iters: int = 10) -> Tensor:
    """Superpixel labels of one grey image.

    Args:
        image: ``(H, W)`` float in ``[0, 1]``.
        n_segments: approximate number of superpixels (grid of ``round(sqrt(n))^2`` seeds).
        compactness: weight of the position (in grid-step units) against intensity; larger = squarer.
        iters: k-means iterations.

    Returns:
        ``(H, W)`` int64 labels in ``0 .. k-1`` (some may be unused).
    """
    if image.ndim != 2:
        raise DataError(f"superpixels need a 2-D (H, W) image, got shape {tuple(image.shape)}")
    h, w = image.shape
    side = max(1, round(math.sqrt(n_segments)))
    step = max(h, w) / side
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    feats = torch.stack([image.float(), compactness * ys / step, compactness * xs / step], -1).reshape(
        -1, 3
    )  # (HW, 3)
    cy = (torch.arange(side, dtype=torch.float32) + 0.5) * h / side
    cx = (torch.arange(side, dtype=torch.float32) + 0.5) * w / side
    gy, gx = torch.meshgrid(cy, cx, indexing="ij")
    seeds = torch.stack([gy.reshape(-1), gx.reshape(-1)], -1).long()  # (k, 2)
    centres = torch.stack(
        [
            image[seeds[:, 0].clamp(max=h - 1), seeds[:, 1].clamp(max=w - 1)].float(),
            compactness * gy.reshape(-1) / step,
            compactness * gx.reshape(-1) / step,
        ],
        -1,
    )  # (k, 3)
    labels = torch.zeros(h * w, dtype=torch.int64)
    for _ in range(iters):
        labels = torch.cdist(feats, centres).argmin(1)  # (HW,)
        sums = torch.zeros_like(centres).index_add_(0, labels, feats)  # (k, 3)
        counts = torch.bincount(labels, minlength=centres.shape[0]).unsqueeze(1)  # (k, 1)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return labels.view(h, w)


def augment_pair(image: Tensor, mask: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random rotation (+-15 deg), scale (0.9-1.1), shift (+-5%), gamma (0.7-1.5) and noise (sd 0.02).

    Args:
        image: ``(C, H, W)`` float in ``[0, 1]``.
        mask: ``(H, W)`` binary.
        generator: the source of randomness (same generator state, same transform).

    Returns:
        The transformed ``(C, H, W)`` image and ``(H, W)`` mask (geometry applied to both).
    """
    u = torch.rand(6, generator=generator)
    angle = math.radians(-15 + 30 * float(u[0]))
    scale = 0.9 + 0.2 * float(u[1])
    tx, ty = -0.05 + 0.1 * float(u[2]), -0.05 + 0.1 * float(u[3])
    gamma = 0.7 + 0.8 * float(u[4])
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor([[[cos, -sin, tx], [sin, cos, ty]]], dtype=torch.float32)  # (1, 2, 3)
    grid = F.affine_grid(theta, [1, 1, *image.shape[1:]], align_corners=False)  # (1, H, W, 2)
    img = F.grid_sample(
        image[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0]
    msk = F.grid_sample(mask[None, None].float(), grid, mode="bilinear", align_corners=False)[0, 0] >= 0.5
    img = img.clamp(0, 1) ** gamma
    img = (img + 0.02 * torch.randn(img.shape, generator=generator)).clamp(0, 1)
    return img, msk.float()


class SuperpixelEpisodes(SeededSampler[SegEpisode]):
    """Seeded pseudo-episodes from unlabelled images: episode ``i`` depends only on ``(seed, i)``.

    Support: the image (and ``n_shot - 1`` augmented copies) with one superpixel as the mask; query:
    ``n_query`` augmented copies. Superpixels smaller than `min_area` pixels, darker on average than
    `min_intensity` (air, padding), or overlapping an `exclude` mask by more than `max_excluded` of their area
    (held-out structures, setting 2) are never chosen.

    Example:
        >>> episodes = SuperpixelEpisodes(unlabelled_images, n_shot=1, n_query=1, seed=0)  # doctest: +SKIP
        >>> ep = episodes(0)
    """

    def __init__(
        self,
        images: Tensor,
        n_shot: int = 1,
        n_query: int = 1,
        seed: int = 0,
        *,
        n_segments: int = 32,
        compactness: float = 0.3,
        min_area: int = 24,
        min_intensity: float = 0.05,
        exclude: Tensor | None = None,
        max_excluded: float = 0.1,
        n_episodes: int = 100,
    ) -> None:
        if images.ndim != 4 or images.shape[0] == 0:
            raise DataError(f"unlabelled images must be (N, C, H, W) with N >= 1, got {tuple(images.shape)}")
        if exclude is not None and tuple(exclude.shape) != (images.shape[0], *images.shape[2:]):
            raise DataError(f"exclude masks must be (N, H, W) like the images, got {tuple(exclude.shape)}")
        self.images, self.exclude = images, exclude
        self.n_shot, self.n_query, self.seed, self.n_episodes = n_shot, n_query, seed, n_episodes
        self.n_segments, self.compactness = n_segments, compactness
        self.min_area, self.min_intensity, self.max_excluded = min_area, min_intensity, max_excluded
        self._candidates: dict[int, list[Tensor]] = {}

    def candidates(self, i: int) -> list[Tensor]:
        """The usable superpixel masks ``(H, W)`` of image `i` (computed once)."""
        if i not in self._candidates:
            grey = self.images[i].mean(0)  # (H, W)
            labels = slic_kmeans(grey, self.n_segments, self.compactness)
            out = []
            for k in torch.unique(labels):
                m = labels == k
                area = int(m.sum())
                if area < self.min_area or float(grey[m].mean()) < self.min_intensity:
                    continue
                if (
                    self.exclude is not None
                    and float(self.exclude[i][m].float().sum()) > self.max_excluded * area
                ):
                    continue
                out.append(m.float())
            self._candidates[i] = out
        return self._candidates[i]

    def episode(self, index: int) -> SegEpisode:
        rng = np.random.default_rng([self.seed, index])
        for _ in range(20):
            i = int(rng.integers(self.images.shape[0]))
            cands = self.candidates(i)
            if cands:
                break
        else:
            raise DataError("no usable superpixel in 20 random images: lower min_area or min_intensity")
        mask = cands[int(rng.integers(len(cands)))]
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        image = self.images[i]
        sup = [(image, mask)] + [augment_pair(image, mask, g) for _ in range(self.n_shot - 1)]
        qry = [augment_pair(image, mask, g) for _ in range(self.n_query)]
        # a strong transform can push a small superpixel out of view: keep foreground in the support
        sup = [(im, m) if m.any() else (image, mask) for im, m in sup]
        return SegEpisode(
            torch.stack([s[0] for s in sup]),
            torch.stack([s[1] for s in sup]),
            torch.stack([q[0] for q in qry]),
            torch.stack([q[1] for q in qry]),
            "superpixel",
        )
