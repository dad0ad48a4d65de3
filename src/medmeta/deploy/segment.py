"""Segment files with a few-shot segmenter: adapt once on the support, predict every query file.

2D inputs give ``OUT/<name>_mask.png`` (0/255, the input's size) and ``OUT/<name>_overlay.png``; NIfTI inputs
give ``OUT/<name>_mask.nii.gz`` (the input's shape, affine and header; uint8 0/1) and an overlay of the
slice with the largest predicted area.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medmeta.data.segmentation.io import (
    Channel,
    Window,
    is_nifti,
    output_stem,
    overlay,
    predict_planes,
    read_mask_plane,
    read_plane,
    read_volume,
    support_pairs,
    write_nifti_mask,
    write_png_mask,
)
from medmeta.deploy.sliding import sliding_probability, support_patches
from medmeta.errors import DataError
from medmeta.methods.segmentation.base import FewShotSegmenter
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
) -> list[Path]:
    """Adapt `model` on the support files and write a mask and an overlay for every query file.

    With `patch`, 2-D images are handled at their own resolution (`medmeta.deploy.sliding`): the model adapts
    on support patches of `patch` native pixels and predicts each query window by window, blended with
    `overlap`; without it, every image is resized whole to `size`.

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
    flat = patch is not None and not any(is_nifti(p) for p in [*support_images, *images])
    if patch is not None and not flat:
        raise DataError(
            "--patch works on 2-D images; NIfTI volumes are segmented slice by slice: drop --patch"
        )
    if flat:
        assert patch is not None
        if len(support_images) != len(support_masks):
            raise DataError(
                f"got {len(support_images)} support images but {len(support_masks)} support masks: give one "
                "mask per image"
            )
        native: list[tuple[np.ndarray, np.ndarray]] = []
        for ip, mp in zip(support_images, support_masks, strict=True):
            img, msk = read_plane(ip, channel), read_mask_plane(mp, label)
            if img.shape != msk.shape:
                raise DataError(f"support image {ip} is {img.shape} but its mask {mp} is {msk.shape}")
            native.append((img, msk))
        xs, ys = support_patches(native, patch=patch, size=size, overlap=overlap)
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
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for path in images:
        stem = output_stem(path)
        if is_nifti(path):
            vol = read_volume(path, window)
            planes = [vol.data[:, :, k] for k in range(vol.data.shape[2])]
            masks = predict_planes(predictor, planes, size)
            mask = np.stack(masks, axis=2)  # (I, J, K)
            written.append(write_nifti_mask(mask, vol.image, out_dir / f"{stem}_mask.nii.gz"))
            k = int(mask.sum(axis=(0, 1)).argmax())
            written.append(overlay(vol.data[:, :, k], mask[:, :, k], out_dir / f"{stem}_overlay.png"))
        else:
            plane = read_plane(path, channel)
            if flat:
                assert patch is not None
                prob = sliding_probability(predictor, plane, patch=patch, size=size, overlap=overlap)
                mask2d = prob >= 0.5
            else:
                (mask2d,) = predict_planes(predictor, [plane], size)
            written.append(write_png_mask(mask2d, out_dir / f"{stem}_mask.png"))
            written.append(overlay(plane, mask2d, out_dir / f"{stem}_overlay.png"))
    return written
