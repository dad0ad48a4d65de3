"""Full-resolution segmentation: adapt on support patches at the image's own resolution, predict a large image
window by window with overlap blending (MONAI's `sliding_window_inference`, Gaussian weights).

A segmenter works at ``size x size`` (its training resolution). Resizing a 1000-px fundus photograph to 64 px
loses every thin vessel; instead, square patches of ``patch`` native pixels are resized to ``size`` (so a
patch sees what a training tile saw), predicted, resized back, and blended where windows overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medmeta._optional import optional_import
from medmeta.data.segmentation.volumes import to_square
from medmeta.errors import DataError


def patch_starts(length: int, patch: int, overlap: float) -> list[int]:
    """Start offsets of windows of `patch` covering `length` with at least `overlap` (0..1) shared."""
    if patch >= length:
        return [0]
    stride = max(1, int(patch * (1 - overlap)))
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def support_patches(
    planes: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    patch: int,
    size: int,
    overlap: float = 0.25,
    min_fraction: float = 0.01,
) -> tuple[Tensor, Tensor]:
    """Support patches ``(K, 1, size, size)`` and masks ``(K, size, size)`` of `patch` native pixels.

    Every window (with `overlap`) of every support plane whose mask covers at least `min_fraction` of it.

    Raises:
        DataError: no window holds enough foreground.
    """
    xs, ys = [], []
    for image, mask in planes:
        for top in patch_starts(image.shape[0], patch, overlap):
            for left in patch_starts(image.shape[1], patch, overlap):
                m = mask[top : top + patch, left : left + patch].astype(np.float32)
                if m.mean() < min_fraction:
                    continue
                xs.append(to_square(image[top : top + patch, left : left + patch], size)[0])
                ys.append(to_square(m, size, is_mask=True)[0])
    if not xs:
        raise DataError(
            f"no {patch}x{patch} support patch holds {100 * min_fraction:g}% foreground: use a larger --patch"
        )
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))


def sliding_probability(
    predictor: Any, plane: np.ndarray, *, patch: int, size: int, overlap: float = 0.25, batch: int = 16
) -> np.ndarray:
    """Foreground probability ``(H, W)`` of a whole plane, window by window at native resolution.

    Args:
        predictor: an adapted segmenter's predictor (``predict(x (n, 1, size, size)) -> logits (n, 2, size, size)``).
        plane: ``(H, W)`` float image in [0, 1].
        patch: window side in native pixels.
        size: the segmenter's working side.
        overlap: share of a window shared with its neighbour (MONAI blends them with Gaussian weights).
    """
    inferers = optional_import("monai.inferers", "full-resolution (sliding-window) segmentation")

    def window_probability(x: Tensor) -> Tensor:  # (b, 1, patch, patch) -> (b, 1, patch, patch)
        small = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        prob = predictor.predict(small).softmax(1)[:, 1:2]  # (b, 1, size, size)
        return F.interpolate(prob, size=x.shape[-2:], mode="bilinear", align_corners=False)

    x = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))[None, None]  # (1, 1, H, W)
    with torch.no_grad():
        out = inferers.sliding_window_inference(
            x,
            (patch, patch),
            batch,
            window_probability,
            overlap=overlap,
            mode="gaussian",
            padding_mode="constant",
        )
    return out[0, 0].numpy()
