"""Describe a dataset without training on it: classes, counts, image sizes and unreadable files."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medmeta.data.folder import scan_image_folder
from medmeta.data.readers import UnreadableImageError, read_image
from medmeta.data.registry import load_dataset, resolve
from medmeta.errors import DataError


@dataclass
class DatasetReport:
    """What ``medmeta data info`` prints."""

    name: str
    kind: str
    path: str | None
    classes: dict[str, dict[str, int]]  # class -> split -> count ("all" when there are no splits)
    image_sizes: dict[str, int]  # "HxW[xC] dtype" -> count (as stored, before resizing)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    synthetic: bool = False

    @property
    def total(self) -> int:
        return sum(sum(v.values()) for v in self.classes.values())


def _shape_key(arr: np.ndarray) -> str:
    return "x".join(str(s) for s in arr.shape) + f" {arr.dtype}"


def describe_dataset(name_or_path: str, root: str | Path | None = None) -> DatasetReport:
    """Inspect a registered dataset or a folder/``.npz`` path.

    Folders are read file by file so that every unreadable image is listed (with its reason) instead of
    stopping at the first one.

    Raises:
        DataError: the dataset is not found, or no image of the folder can be read.
    """
    entry = resolve(name_or_path, root)
    classes: dict[str, Counter[str]] = {}
    sizes: Counter[str] = Counter()
    unreadable: list[tuple[str, str]] = []
    if entry.kind == "folder":
        assert entry.path is not None
        for path, cls, split in scan_image_folder(entry.path):
            try:
                arr = read_image(path)
            except UnreadableImageError as exc:
                unreadable.append((str(path.relative_to(entry.path)), str(exc).split(": ", 1)[-1]))
                continue
            sizes[_shape_key(arr)] += 1
            classes.setdefault(cls, Counter())[split or "all"] += 1
        if not classes:
            file, why = unreadable[0]
            raise DataError(
                f"no readable image in {entry.path}: all {len(unreadable)} image file(s) failed to decode "
                f"(first: {file}: {why}); fix or replace them"
            )
        synthetic = False
    else:
        ds = load_dataset(name_or_path, root=root, image_size=64 if entry.kind == "builtin" else 28)
        splits = ds.splits if ds.splits is not None else np.full(len(ds), "all")
        for label, split in zip(ds.labels.tolist(), splits.tolist(), strict=True):
            classes.setdefault(ds.class_names[label], Counter())[split] += 1
        sizes[_shape_key(ds.images[0])] = len(ds)
        synthetic = ds.synthetic
    return DatasetReport(
        name=entry.name,
        kind=entry.kind,
        path=None if entry.path is None else str(entry.path),
        classes={c: dict(v) for c, v in sorted(classes.items())},
        image_sizes=dict(sizes.most_common()),
        unreadable=unreadable,
        synthetic=synthetic,
    )
