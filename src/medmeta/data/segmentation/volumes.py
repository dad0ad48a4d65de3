"""Intensity windowing, 2D slices from 3D volumes, and the square resize used for every segmentation image.

* **CT**: a soft-tissue (abdomen) window, width 400 HU and level 40 HU by default: ``[L - W/2, L + W/2] =
  [-160, 240]`` HU is mapped linearly to ``[0, 1]`` and clipped.
* **MR** and any other modality: the 0.5th and 99.5th percentiles of the whole volume are mapped to
  ``[0, 1]`` and clipped (MR intensities have no physical unit).
* **2D rasters** (DRIVE, EM): ``uint8 / 255``; DRIVE uses the green channel (vessels have the best
  contrast there).
* **Slices** are axial: index ``k`` of the volume's last axis (the NIfTI ``k`` axis, superior for RAS/LPS
  volumes), taken as the ``(i, j)`` array as stored. A slice is kept for a structure when the structure
  covers at least ``min_pixels`` pixels of it at native resolution (`select_slices`).
* **Square resize** (`to_square`): the slice is zero-padded to a square (after windowing, so the padding is
  the window's lowest value), then resized to ``size x size`` (bilinear for images; area-averaged and
  thresholded at 0.5 for masks). `from_square` inverts it exactly for the shape, so a predicted mask
  lands on the input's pixel grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medmeta.errors import DataError

CT_WINDOW = (400.0, 40.0)  # (width, level) in HU: abdomen soft-tissue window


def window_ct(volume: np.ndarray, width: float = CT_WINDOW[0], level: float = CT_WINDOW[1]) -> np.ndarray:
    """Map HU ``[level - width/2, level + width/2]`` linearly to ``[0, 1]`` (clipped); float32, same shape."""
    if width <= 0:
        raise DataError(f"CT window width must be positive, got {width}")
    lo = level - width / 2.0
    return np.clip((volume.astype(np.float32) - lo) / width, 0.0, 1.0)


def scale_percentiles(volume: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Map the `low`-th and `high`-th percentiles of `volume` to 0 and 1 (clipped); float32, same shape."""
    arr = np.nan_to_num(volume.astype(np.float32))
    lo, hi = np.percentile(arr, [low, high])
    if hi <= lo:
        lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def select_slices(mask_volume: np.ndarray, min_pixels: int) -> list[int]:
    """Axial slice indices (last axis) where the binary `mask_volume` has at least `min_pixels` pixels.

    Args:
        mask_volume: ``(I, J, K)`` boolean or 0/1 array.
        min_pixels: smallest structure area kept, in native pixels.
    """
    if mask_volume.ndim != 3:
        raise DataError(f"expected a 3-D mask volume (I, J, K), got shape {mask_volume.shape}")
    areas = (mask_volume > 0).sum(axis=(0, 1))  # (K,)
    return [int(k) for k in np.flatnonzero(areas >= max(1, min_pixels))]


@dataclass(frozen=True)
class SquareGeometry:
    """How a ``(height, width)`` slice was padded to a square of side ``side`` before resizing."""

    height: int
    width: int
    side: int
    top: int
    left: int


def _geometry(height: int, width: int) -> SquareGeometry:
    side = max(height, width)
    return SquareGeometry(height, width, side, (side - height) // 2, (side - width) // 2)


def to_square(image: np.ndarray, size: int, *, is_mask: bool = False) -> tuple[np.ndarray, SquareGeometry]:
    """Zero-pad a 2D array to a square and resize it to ``size x size``.

    Args:
        image: ``(H, W)`` float image in ``[0, 1]`` or binary mask.
        size: output side.
        is_mask: area-average then threshold at 0.5 (a mask stays binary) instead of bilinear.

    Returns:
        ``(size, size)`` float32 array (0/1 for masks) and the geometry for `from_square`.
    """
    if image.ndim != 2:
        raise DataError(f"expected a 2-D image (H, W), got shape {image.shape}")
    geo = _geometry(*image.shape)
    padded = np.zeros((geo.side, geo.side), dtype=np.float32)
    padded[geo.top : geo.top + geo.height, geo.left : geo.left + geo.width] = image
    t = torch.from_numpy(padded)[None, None]  # (1, 1, side, side)
    if is_mask:
        out = F.interpolate(t, size=(size, size), mode="area") >= 0.5  # (1, 1, size, size)
        return out[0, 0].numpy().astype(np.float32), geo
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out[0, 0].numpy().astype(np.float32), geo


def from_square(mask: np.ndarray, geo: SquareGeometry) -> np.ndarray:
    """Invert `to_square` for a ``(size, size)`` mask or probability map: ``(H, W)`` on the input's grid.

    The map is resized to the padded square (bilinear), the padding cut off; threshold afterwards.
    """
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]  # (1, 1, size, size)
    big = F.interpolate(t, size=(geo.side, geo.side), mode="bilinear", align_corners=False)[0, 0]
    return big[geo.top : geo.top + geo.height, geo.left : geo.left + geo.width].numpy()
