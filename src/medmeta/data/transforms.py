"""Array transforms used when materialising datasets and when feeding models.

Materialising (numpy, uint8): channel conversion and resizing to the configured size, once per image.
Feeding (torch): uint8 -> normalised float, on the device that runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from medmeta.errors import DataError

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale any numeric image to uint8.

    uint8 passes through; other integer and float images (16-bit X-ray, CT, MR) are min-max scaled per
    image after clipping to the 0.5 and 99.5 percentiles, which removes the odd hot pixel.
    """
    if image.dtype == np.uint8:
        return image
    arr = image.astype(np.float32)
    if not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = np.percentile(arr, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (np.clip(arr, lo, hi) - lo) / (hi - lo) * 255.0
    return np.rint(out).astype(np.uint8)


def to_channels_first(image: np.ndarray, channels: int) -> np.ndarray:
    """A ``(H, W)``, ``(H, W, 1|3|4)`` uint8 image as ``(channels, H, W)``.

    Grey images are repeated to 3 channels; RGB images become grey by luminance when ``channels == 1``;
    an alpha channel is dropped.
    """
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if image.ndim == 2:
        grey = image[None]
        return np.repeat(grey, channels, axis=0) if channels == 3 else grey
    if image.ndim != 3:
        raise DataError(f"expected a 2-D image (H, W) or (H, W, C), got shape {image.shape}")
    if image.shape[2] == 1:
        return to_channels_first(image[:, :, 0], channels)
    rgb = image[:, :, :3]
    if channels == 3:
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))
    grey = np.rint(rgb.astype(np.float32) @ _LUMA).clip(0, 255).astype(np.uint8)
    return grey[None]


def resize_2d(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a ``(C, H, W)`` uint8 image to ``(C, size, size)``: centre crop to square, then bilinear."""
    c, h, w = image.shape
    if (h, w) == (size, size):
        return image
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[:, top : top + side, left : left + side]
    out = np.empty((c, size, size), dtype=np.uint8)
    for i in range(c):
        pil = Image.fromarray(square[i])
        out[i] = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
    return out


def resize_3d(volume: np.ndarray, size: int) -> np.ndarray:
    """Resize a ``(C, D, H, W)`` uint8 volume to ``(C, size, size, size)`` (trilinear)."""
    if volume.shape[1:] == (size, size, size):
        return volume
    t = torch.from_numpy(volume.astype(np.float32))[None]  # (1, C, D, H, W)
    out = torch.nn.functional.interpolate(t, size=(size,) * 3, mode="trilinear", align_corners=False)
    return out[0].round().clamp(0, 255).to(torch.uint8).numpy()


def convert_batch(images: np.ndarray, channels: int, size: int | None) -> np.ndarray:
    """Convert a uint8 batch ``(N, H, W[, C])`` or ``(N, D, H, W)`` to channels-first at `size`.

    2D input: ``(N, H, W)`` grey or ``(N, H, W, C)`` colour -> ``(N, channels, size, size)``.
    3D input is recognised by the caller and passed as ``(N, D, H, W)`` with ``spatial_dims=3`` via
    `convert_volumes`; this function handles 2D only.
    """
    out = [to_channels_first(img, channels) for img in images]
    if size is not None:
        out = [resize_2d(img, size) for img in out]
    return np.stack(out).astype(np.uint8, copy=False)


def convert_volumes(volumes: np.ndarray, channels: int, size: int | None) -> np.ndarray:
    """``(N, D, H, W)`` uint8 grey volumes -> ``(N, channels, size, size, size)``."""
    vols = volumes[:, None]  # (N, 1, D, H, W)
    if channels == 3:
        vols = np.repeat(vols, 3, axis=1)  # (N, 3, D, H, W)
    if size is not None:
        vols = np.stack([resize_3d(v, size) for v in vols])
    return np.ascontiguousarray(vols)


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std applied to images scaled to ``[0, 1]``; stored in checkpoints."""

    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)

    def __call__(self, images: Tensor) -> Tensor:
        """uint8 or float ``(N, C, ...)`` -> normalised float32 ``(N, C, ...)``."""
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        shape = (1, -1) + (1,) * (images.ndim - 2)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return (x - mean) / std
