"""Score predicted masks against reference masks, image by image at full resolution: Dice and HD95.

Predictions are ``STEM_mask.png`` files (what ``medmeta segment`` writes) or ``STEM.png``; references are a
segmentation folder (`medmeta.data.segmentation.folder`: images/ + masks/, STEM_mask files or a manifest) or a
plain folder of masks named by stem. Every non-zero pixel is foreground (or the value `label`). An optional
region mask per image (``--roi``: a folder of masks by stem, e.g. DRIVE's field of view) restricts both masks to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medmeta.data.readers import image_suffix, is_image_file, read_image
from medmeta.errors import DataError
from medmeta.eval.mask_metrics import dice, hd95, summarize

MASK_SUFFIX = "_mask"


@dataclass(frozen=True)
class MaskScore:
    """Per-image Dice and HD95 (pixels) of the matched predictions, with their summaries."""

    names: tuple[str, ...]
    dice: np.ndarray
    hd95: np.ndarray

    def summary(self) -> dict[str, dict[str, float]]:
        return {"dice": summarize(self.dice.tolist()), "hd95": summarize(self.hd95.tolist())}


def _stem(path: Path) -> str:
    stem = path.name[: -len(image_suffix(path))]
    return stem[: -len(MASK_SUFFIX)] if stem.endswith(MASK_SUFFIX) else stem


def _by_stem(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} not found: check the path")
    out = {_stem(p): p for p in sorted(folder.iterdir()) if p.is_file() and is_image_file(p)}
    if not out:
        raise DataError(f"{what} folder {folder} holds no mask image")
    return out


def _references(folder: Path) -> dict[str, Path]:
    from medmeta.data.segmentation.folder import find_pairs

    try:
        return {group: mask for group, _, mask in find_pairs(folder)}
    except DataError:
        return _by_stem(folder, "reference")


def _binary(path: Path, label: int | None) -> np.ndarray:
    arr = read_image(path)
    arr = arr[..., 0] if arr.ndim == 3 else arr
    return arr == label if label is not None else arr > 0


def score_masks(
    predictions: Path, references: Path, *, label: int | None = None, roi: Path | None = None
) -> MaskScore:
    """Dice and HD95 of every prediction that has a reference of the same stem.

    Raises:
        DataError: missing folders, no prediction with a reference, or masks of different sizes.
    """
    pred, ref = _by_stem(predictions, "prediction"), _references(references)
    regions = _by_stem(roi, "region") if roi is not None else {}
    names = sorted(set(pred) & set(ref))
    if not names:
        raise DataError(
            f"no prediction in {predictions} has a reference mask of the same stem in {references} (predictions "
            f"{', '.join(list(pred)[:3])}; references {', '.join(list(ref)[:3])})"
        )
    dices, hds = [], []
    for name in names:
        p, t = _binary(pred[name], None), _binary(ref[name], label)
        if p.shape != t.shape:
            raise DataError(
                f"prediction {pred[name]} is {p.shape} but its reference {ref[name]} is {t.shape}"
            )
        if name in regions:
            inside = _binary(regions[name], None)
            p, t = p & inside, t & inside
        pt, tt = torch.from_numpy(p)[None], torch.from_numpy(t)[None]
        dices.append(float(dice(pt, tt)[0]))
        hds.append(float(hd95(pt, tt)[0]))
    return MaskScore(tuple(names), np.asarray(dices), np.asarray(hds))
