"""Real BCCD blood smears for the detection tests, and a tiny base-trained detector."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from medmeta.data.boxes import load_box_images, read_boxes
from medmeta.methods.detection import DET_METHODS, FewShotDetector
from medmeta.train.detection import fit_detector

BASE, NOVEL = ("Platelets", "RBC"), "WBC"
CLASSES = (*BASE, NOVEL)


def bccd_root(data_dir: Path) -> Path:
    """``detection/bccd`` under the data root; the test is skipped (with the reason) when it is absent."""
    root = data_dir / "detection" / "bccd"
    if not (root / "Annotations").is_dir():
        pytest.skip(f"BCCD not found at {root}: set MEDMETA_DATA to the shared data folder")
    return root


def bccd_images(
    data_dir: Path, n: int, size: int = 160, classes: tuple[str, ...] = CLASSES, split: str = "trainval"
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The first `n` images of a BCCD split, letterboxed to `size`, with boxes of `classes`."""
    with warnings.catch_warnings():  # BCCD's two degenerate boxes, dropped on purpose
        warnings.simplefilter("ignore", UserWarning)
        anns = read_boxes(bccd_root(data_dir), split=split, drop_bad=True)[:n]
    images, boxes, labels, _ = load_box_images(anns, size, classes)
    return images, boxes, labels


def tiny_detector(data_dir: Path, method: str = "tfa", size: int = 160, **options: object) -> FewShotDetector:
    """A detector of `method` trained for one epoch on 8 BCCD images of the base classes (seconds)."""
    images, boxes, labels = bccd_images(data_dir, 8, size, BASE)
    torch.manual_seed(0)
    det = DET_METHODS[method].from_options(BASE, {"image_size": size, **options})
    fit_detector(det, images, boxes, labels, epochs=1, batch_size=4, lr=1e-3, seed=0)
    return det
