"""Segment files with a few-shot segmenter: adapt once on the support, predict every query file.

2D inputs give ``OUT/<name>_mask.png`` (0/255, the input's size) and ``OUT/<name>_overlay.png``; NIfTI inputs
give ``OUT/<name>_mask.nii.gz`` (the input's shape, affine and header; uint8 0/1) and an overlay of the
slice with the largest predicted area.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmeta.data.segmentation.io import (
    Channel,
    Window,
    is_nifti,
    output_stem,
    overlay,
    predict_planes,
    read_plane,
    read_volume,
    support_pairs,
    support_planes,
    write_nifti_mask,
    write_png_mask,
)
from medmeta.deploy.sliding import sliding_probability, support_patches
from medmeta.errors import DataError
from medmeta.methods.segmentation.base import FewShotSegmenter
from medmeta.methods.segmentation.prototype import PrototypePredictor
from medmeta.tasks.segmentation import MaskSupport


def segment_files(
    model: FewShotSegmenter,
    support_images: list[Path],
    support_masks: list[Path],
    images: list[Path],
    out_dir: Path,
    *,
    size: int,
    channel: Channel = "grey",
    window: Window = "ct",
    label: int | None = None,
    max_slices: int = 5,
    patch: int | None = None,
    overlap: float = 0.25,
    on_note: Callable[[str], None] | None = None,
) -> list[Path]:
    """Adapt `model` on the support files and write a mask and an overlay for every query file.

    With `patch`, images and every axial slice of a volume are handled at their own resolution
    (`medmeta.deploy.sliding`): the model adapts on support patches of `patch` native pixels (from the
    support images, or the support volumes' chosen slices) and predicts each query plane window by window,
    blended with `overlap`; without it, every plane is resized whole to `size`. The segmenters are 2-D, so a
    volume is segmented slice by slice at its own in-plane resolution and written on its own grid.

    `on_note` receives a line for the user when the support gives ALPNet's local prototypes to the
    background only (a thin foreground: `PrototypePredictor.foreground_has_no_local_prototype`).

    Returns:
        The written files, in order.

    Raises:
        DataError: a file is missing or unreadable, or a support mask is empty or mis-sized.
    """
    missing = [str(p) for p in [*support_images, *support_masks, *images] if not p.is_file()]
    if missing:
        raise DataError(f"file(s) not found: {', '.join(missing)}")
    if not images:
        raise DataError("no image to segment: pass --images")
    if patch is not None:
        planes = support_planes(
            support_images, support_masks, channel=channel, window=window, label=label, max_slices=max_slices
        )
        xs, ys = support_patches(
            [(img, msk) for img, msk, _ in planes], patch=patch, size=size, overlap=overlap
        )
    else:
        xs, ys = support_pairs(
            support_images,
            support_masks,
            size=size,
            channel=channel,
            window=window,
            label=label,
            max_slices=max_slices,
        )
    model.eval()
    with torch.no_grad():
        predictor = model.adapt(MaskSupport(xs, ys))
    if (
        on_note is not None
        and isinstance(predictor, PrototypePredictor)
        and predictor.foreground_has_no_local_prototype
    ):
        on_note(
            "note: the support's foreground fills no pooling window of the local prototypes (a thin "
            f"structure), so it has one prototype against {predictor.bg.shape[0]} background ones and may "
            "be missed: try --prototypes global"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for path in images:
        stem = output_stem(path)
        if is_nifti(path):
            vol = read_volume(path, window)
            planes_k = [vol.data[:, :, k] for k in range(vol.data.shape[2])]
            mask = np.stack(_predict(predictor, planes_k, size, patch, overlap), axis=2)  # (I, J, K)
            written.append(write_nifti_mask(mask, vol.image, out_dir / f"{stem}_mask.nii.gz"))
            k = int(mask.sum(axis=(0, 1)).argmax())
            written.append(overlay(vol.data[:, :, k], mask[:, :, k], out_dir / f"{stem}_overlay.png"))
        else:
            plane = read_plane(path, channel)
            (mask2d,) = _predict(predictor, [plane], size, patch, overlap)
            written.append(write_png_mask(mask2d, out_dir / f"{stem}_mask.png"))
            written.append(overlay(plane, mask2d, out_dir / f"{stem}_overlay.png"))
    return written


def _predict(
    predictor: Any, planes: list[np.ndarray], size: int, patch: int | None, overlap: float
) -> list[np.ndarray]:
    """Foreground masks ``(H, W)`` bool of `planes`: resized whole to `size`, or window by window at their own
    resolution with `patch`."""
    if patch is None:
        return predict_planes(predictor, planes, size)
    return [sliding_probability(predictor, p, patch=patch, size=size, overlap=overlap) >= 0.5 for p in planes]
