"""Reading support/query files and writing predicted masks (PNG or NIfTI, input geometry kept) and overlays.

2D images (PNG, JPEG, TIFF, GIF, BMP, DICOM) are read with `medmeta.data.readers.read_image`; colour images
become grey by luminance (``channel="grey"``) or their green channel (``"green"``, as DRIVE was trained);
8-bit images are divided by 255, others percentile-scaled. NIfTI volumes are windowed (``ct``: W400/L40,
``percentile``: 0.5-99.5th percentiles) and segmented slice by slice along the last axis; the written mask
has the input's shape, affine and header (data type uint8).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from medmeta._optional import optional_import
from medmeta.data.readers import NIFTI_SUFFIXES, image_suffix, read_image
from medmeta.data.segmentation.volumes import (
    from_square,
    scale_percentiles,
    select_slices,
    to_square,
    window_ct,
)
from medmeta.errors import DataError

Channel = Literal["grey", "green"]
Window = Literal["ct", "percentile"]


def is_nifti(path: Path) -> bool:
    return image_suffix(path) in NIFTI_SUFFIXES


def read_plane(path: Path, channel: Channel = "grey") -> np.ndarray:
    """A 2D image file as ``(H, W)`` float32 in ``[0, 1]``."""
    arr = read_image(path)
    if arr.ndim == 3:
        rgb = arr[:, :, :3].astype(np.float32)
        grey = rgb[:, :, 1] if channel == "green" else rgb @ np.array([0.299, 0.587, 0.114], np.float32)
        return grey / 255.0 if arr.dtype == np.uint8 else scale_percentiles(grey)
    return arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else scale_percentiles(arr)


def read_mask_plane(path: Path, label: int | None = None) -> np.ndarray:
    """A 2D mask file as ``(H, W)`` bool: ``== label`` if given, else any non-zero pixel."""
    arr = read_image(path)
    if arr.ndim == 3:
        arr = arr[:, :, :3].max(axis=2)
    return arr == label if label is not None else arr > 0


@dataclass
class Volume:
    """A NIfTI volume windowed to ``[0, 1]`` and the nibabel image it came from (for its geometry)."""

    data: np.ndarray  # (I, J, K) float32
    image: Any


def read_volume(path: Path, window: Window = "ct") -> Volume:
    nib = optional_import("nibabel", "segmenting NIfTI volumes")
    try:
        img = nib.load(str(path))
        raw = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises several types on bad files
        raise DataError(f"cannot read NIfTI {path}: {exc}") from None
    if raw.ndim != 3:
        raise DataError(f"{path}: expected a 3-D NIfTI volume, got shape {raw.shape}")
    return Volume(window_ct(raw) if window == "ct" else scale_percentiles(raw), img)


def read_mask_volume(path: Path, label: int | None = None) -> np.ndarray:
    nib = optional_import("nibabel", "reading NIfTI masks")
    try:
        arr = np.asarray(nib.load(str(path)).dataobj)
    except Exception as exc:
        raise DataError(f"cannot read NIfTI mask {path}: {exc}") from None
    return arr == label if label is not None else arr > 0


def support_planes(
    images: list[Path],
    masks: list[Path],
    *,
    channel: Channel = "grey",
    window: Window = "ct",
    label: int | None = None,
    max_slices: int = 5,
    min_pixels: int = 20,
) -> list[tuple[np.ndarray, np.ndarray, Path]]:
    """Support ``(image (H, W) float, mask (H, W) bool, mask file)`` planes at their own resolution.

    A NIfTI support pair contributes up to `max_slices` evenly spaced axial slices in which the mask has
    at least `min_pixels` pixels.

    Raises:
        DataError: unequal numbers of images and masks, none at all, an image and its mask of different
            sizes, or a NIfTI mask without a slice holding the structure.
    """
    if len(images) != len(masks):
        raise DataError(
            f"got {len(images)} support images but {len(masks)} support masks: give one mask per image"
        )
    if not images:
        raise DataError("no support image: pass --support-images and --support-masks")
    out: list[tuple[np.ndarray, np.ndarray, Path]] = []
    for ip, mp in zip(images, masks, strict=True):
        if is_nifti(ip):
            vol, mvol = read_volume(ip, window).data, read_mask_volume(mp, label)
            if vol.shape != mvol.shape:
                raise DataError(f"support volume {ip} is {vol.shape} but its mask {mp} is {mvol.shape}")
            ks = select_slices(mvol, min_pixels)
            if not ks:
                raise DataError(f"support mask {mp} has no slice with >= {min_pixels} foreground pixels")
            pick = [ks[i] for i in np.linspace(0, len(ks) - 1, min(max_slices, len(ks))).round().astype(int)]
            out += [(vol[:, :, k], mvol[:, :, k].astype(bool), mp) for k in dict.fromkeys(pick)]
        else:
            img, msk = read_plane(ip, channel), read_mask_plane(mp, label)
            if img.shape != msk.shape:
                raise DataError(f"support image {ip} is {img.shape} but its mask {mp} is {msk.shape}")
            out.append((img, msk.astype(bool), mp))
    return out


def support_pairs(
    images: list[Path],
    masks: list[Path],
    *,
    size: int,
    channel: Channel = "grey",
    window: Window = "ct",
    label: int | None = None,
    max_slices: int = 5,
    min_pixels: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Support tensors ``(K, 1, size, size)`` and ``(K, size, size)`` from image/mask files: the planes of
    `support_planes`, each padded to a square and resized whole to `size`."""
    xs, ys = [], []
    for img, msk, mp in support_planes(
        images,
        masks,
        channel=channel,
        window=window,
        label=label,
        max_slices=max_slices,
        min_pixels=min_pixels,
    ):
        x, _ = to_square(img, size)
        y, _ = to_square(msk.astype(np.float32), size, is_mask=True)
        if not y.any():
            raise DataError(f"support mask {mp} is empty at {size} px: use a mask with foreground")
        xs.append(x)
        ys.append(y)
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))


def predict_planes(predictor: Any, planes: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Foreground masks ``(H, W)`` bool, on each plane's own grid."""
    out: list[np.ndarray] = []
    for start in range(0, len(planes), 16):
        chunk = planes[start : start + 16]
        squares = [to_square(p, size) for p in chunk]
        x = torch.from_numpy(np.stack([s[0] for s in squares]))[:, None]  # (n, 1, size, size)
        with torch.no_grad():
            prob = predictor.predict(x).softmax(1)[:, 1].numpy()  # (n, size, size)
        out.extend(from_square(p, geo) >= 0.5 for p, (_, geo) in zip(prob, squares, strict=True))
    return out


def overlay(image: np.ndarray, mask: np.ndarray, path: Path) -> Path:
    """Save the grey ``(H, W)`` image in ``[0, 1]`` with the mask blended in red (PNG)."""
    grey = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    rgb = np.stack([grey] * 3, -1).astype(np.float32)
    red = np.array([255.0, 0.0, 0.0])
    rgb[mask] = 0.55 * rgb[mask] + 0.45 * red
    Image.fromarray(rgb.astype(np.uint8)).save(path)
    return path


def write_png_mask(mask: np.ndarray, path: Path) -> Path:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path


def write_nifti_mask(mask: np.ndarray, reference: Any, path: Path) -> Path:
    """Save a ``(I, J, K)`` mask as uint8 NIfTI with the reference image's affine and header."""
    nib = optional_import("nibabel", "writing NIfTI masks")
    if mask.shape != tuple(reference.shape[:3]):
        raise DataError(f"mask {mask.shape} does not match the input volume {reference.shape}")
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    out = nib.Nifti1Image(mask.astype(np.uint8), reference.affine, header)
    nib.save(out, str(path))
    return path


def output_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", *(path.suffixes[-1:] if path.suffix else [])):
        if name.lower().endswith(suffix.lower()):
            return name[: -len(suffix)]
    return name
