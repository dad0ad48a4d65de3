"""Near-duplicate images within and across the splits of a dataset (train/test leakage).

A medical set scraped from several sources can hold the same scan twice, re-encoded or resized. A test
image with a near-copy in training inflates a supervised score, and a few-shot episode can put near-copies
in its support and its query. Images are compared by a coarse perceptual key, the one of
``../shared/data/README.md``: the grey image resized to 16x16 (area average) and quantised to 8 levels;
images with equal keys are near-duplicates.

Example:
    >>> report = near_duplicates(load_dataset("brain_tumor_mri", image_size=64, channels=1))  # doctest: +SKIP
    >>> report.test_with_train_copy  # doctest: +SKIP
    245
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medmeta.data.datasets import ImageDataset

KEY_SIZE, LEVELS = 16, 8


def perceptual_keys(images: np.ndarray) -> list[bytes]:
    """One key per image of uint8 ``(N, C, H, W)``: grey, 16x16 area average, 8 intensity levels."""
    keys: list[bytes] = []
    for start in range(0, len(images), 512):
        x = torch.from_numpy(images[start : start + 512]).float().mean(1, keepdim=True)  # (n, 1, H, W)
        small = F.adaptive_avg_pool2d(x, KEY_SIZE)[:, 0]  # (n, 16, 16) in [0, 255]
        levels = (small * LEVELS / 256.0).floor().clamp(0, LEVELS - 1).to(torch.uint8)
        keys.extend(row.numpy().tobytes() for row in levels)
    return keys


@dataclass(frozen=True)
class NearDuplicateReport:
    """Near-duplicate groups of a dataset.

    Attributes:
        domain: the dataset's name.
        groups: indices of images sharing a key, for every key held by more than one image.
        splits: split name per image (``"all"`` when the dataset has none).
    """

    domain: str
    groups: list[np.ndarray]
    splits: np.ndarray

    @property
    def test_with_train_copy(self) -> int:
        """Test images with a near-duplicate in the training split."""
        return sum(
            int(np.sum(self.splits[g] == "test")) for g in self.groups if np.any(self.splits[g] == "train")
        )

    @property
    def pairs_within_splits(self) -> int:
        """Near-duplicate pairs whose two images sit in the same split."""
        total = 0
        for g in self.groups:
            _, counts = np.unique(self.splits[g], return_counts=True)
            total += int(sum(c * (c - 1) // 2 for c in counts))
        return total

    def summary(self) -> str:
        n_test = int(np.sum(self.splits == "test"))
        parts = [
            f"{self.domain}: {sum(len(g) for g in self.groups)} images in {len(self.groups)} near-duplicate groups"
        ]
        if n_test and np.any(self.splits == "train"):
            parts.append(
                f"{self.test_with_train_copy} of {n_test} test images have a near-duplicate in train"
            )
        parts.append(f"{self.pairs_within_splits} near-duplicate pairs inside one split")
        return "; ".join(parts) + f" (key: {KEY_SIZE}x{KEY_SIZE} grey, {LEVELS} levels)"


_SPLIT_PRIORITY = {"train": 0, "val": 1, "test": 2}


def dedupe(dataset: ImageDataset) -> ImageDataset:
    """`dataset` with one image per near-duplicate group: the one in the training split when the group
    spans splits (so the test split loses its near-copies of training images), else the first. 3D
    volumes have no key and are returned as they are."""
    if dataset.images.ndim != 4:
        return dataset
    report = near_duplicates(dataset)
    drop: list[int] = []
    for g in report.groups:
        order = sorted(g.tolist(), key=lambda i: (_SPLIT_PRIORITY.get(str(report.splits[i]), 3), i))
        drop.extend(order[1:])
    if not drop:
        return dataset
    keep = np.setdiff1d(np.arange(len(dataset.images)), np.asarray(drop))
    return dataset.subset(keep, relabel=False)


def near_duplicates(dataset: ImageDataset) -> NearDuplicateReport:
    """Group the images of a 2D `dataset` by their perceptual key."""
    if dataset.images.ndim != 4:
        raise ValueError(f"{dataset.domain}: near-duplicate keys are defined for 2D images, got 3D volumes")
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for i, key in enumerate(perceptual_keys(dataset.images)):
        by_key[key].append(i)
    groups = [np.asarray(v) for v in by_key.values() if len(v) > 1]
    splits = dataset.splits if dataset.splits is not None else np.full(len(dataset.images), "all")
    return NearDuplicateReport(dataset.domain, groups, np.asarray(splits).astype(str))
