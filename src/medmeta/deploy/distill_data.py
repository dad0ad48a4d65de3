"""What `medmeta distill` reads and where it writes: unlabelled images, a labelled test set, its folder.

Unlabelled images come from a folder (searched recursively; class sub-folders, if any, are ignored) or a
domain's training split (``NAME`` or ``NAME@train``); a test split is refused, and so is a folder laid out
as ``train/test``. An unlabelled image identical (at the model's input size) to a test image is dropped,
and a test image identical to a support image is left out of the score, so neither the student nor the
score sees what it is judged on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmeta.data.datasets import ImageDataset
from medmeta.data.folder import SPLIT_NAMES
from medmeta.data.readers import DEFAULT_MAX_PIXELS
from medmeta.data.registry import DomainSpec
from medmeta.deploy.inputs import list_image_files, load_queries, load_support
from medmeta.errors import DataError, OutputError

#: Every file `medmeta distill` writes in its --out folder, including temporary files of an interrupted write.
OUT_FILES = re.compile(
    r"student\.json|student-[0-9a-f]{8}\.safetensors|student\.onnx|report\.json"
    r"|\.(?:student|report)[\w.-]*\.tmp"
)


def check_distill_folder(out: Path, *, overwrite: bool = False) -> list[str]:
    """Check --out before any work (no side effect): missing or empty, or (with `overwrite`) holding only
    distill's files. `medmeta.outputs.claim_output_folder` creates it once the whole run is checked.

    Returns:
        The earlier distillation's files to remove once the new student is ready (with `overwrite`).

    Raises:
        OutputError: a folder holding files distill did not write, an earlier student without
            `overwrite`, or a link or file at `out`.
    """
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputError(
            f"--out {out} is {'a link' if out.is_symlink() else 'a file'}, not a folder: choose a new folder path"
        )
    entries = sorted(os.listdir(out)) if out.is_dir() else []
    foreign = [n for n in entries if not OUT_FILES.fullmatch(n)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(
            f"--out {out} holds files distill did not write ({shown}): choose a new or empty folder"
        )
    if entries and not overwrite:
        raise OutputError(
            f"--out {out} already holds a distilled student ({', '.join(entries[:3])}): pass --overwrite "
            "to replace it, or choose another --out"
        )
    return entries


def _identical(rows: np.ndarray, others: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: which images of `rows` ``(n, C, H, W)`` equal one of `others` ``(m, C, H, W)``."""
    seen = {r.tobytes() for r in np.ascontiguousarray(others).reshape(len(others), -1)}
    return np.array([r.tobytes() in seen for r in np.ascontiguousarray(rows).reshape(len(rows), -1)], bool)


def _load_domain(
    text: str, default_split: str, *, image_size: int, channels: int, data_dir: Path | None, dedupe: bool
) -> tuple[ImageDataset, str]:
    spec = DomainSpec.parse(text)
    whole = DomainSpec(spec.name, None, spec.classes)
    ds = whole.load(root=data_dir, image_size=image_size, channels=channels, skip_bad=True, dedupe=dedupe)
    split = spec.split or (default_split if ds.splits is not None else None)
    if split is not None:
        ds = ds.select_split(split)
    return ds, str(DomainSpec(spec.name, split, spec.classes))


def read_unlabelled(
    source: str | Path,
    *,
    image_size: int,
    channels: int,
    max_images: int,
    seed: int,
    data_dir: Path | None = None,
    dedupe: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, str]:
    """Up to `max_images` unlabelled images (a seeded choice) as uint8 ``(N, C, H, W)``, and what they are.

    Raises:
        DataError: a test split, a folder split into train/test, nothing readable, or an unknown domain.
    """
    rng = np.random.default_rng((seed, 5))
    path = Path(source)
    if path.is_dir():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir() and p.name in SPLIT_NAMES)
        if splits or path.name == "test":
            raise DataError(
                f"--images {path} is {'split into ' + ', '.join(splits) if splits else 'a test split'}: give "
                f"training images only (e.g. {path / 'train' if splits else path.parent / 'train'}), never a test split"
            )
        files = list_image_files([path])
        if len(files) > max_images:
            files = [files[i] for i in np.sort(rng.choice(len(files), max_images, replace=False))]
        queries = load_queries(files, image_size=image_size, channels=channels, max_pixels=max_pixels)
        return queries.images, f"{len(queries.images)} image(s) of folder {path}"
    spec = DomainSpec.parse(str(source))
    if spec.split == "test":
        raise DataError(
            f"--images {source} is a test split: distil on training images ({spec.name}@train), never on the "
            "images the student is tested on"
        )
    ds, name = _load_domain(
        str(source), "train", image_size=image_size, channels=channels, data_dir=data_dir, dedupe=dedupe
    )
    pick = np.arange(len(ds))
    if len(ds) > max_images:
        pick = np.sort(rng.choice(len(ds), max_images, replace=False))
    return np.ascontiguousarray(ds.images[pick]), f"{len(pick)} image(s) of {name}"


@dataclass(frozen=True)
class TestImages:
    """A labelled test set read at the model's input size.

    Attributes:
        images: uint8 ``(n, C, H, W)``; labels: ``(n,)`` int64 in the model's class order.
        name: what was read; left_out: images identical to a support image (not scored).
    """

    images: np.ndarray
    labels: np.ndarray
    name: str
    left_out: int = 0


def read_test(
    source: str | Path,
    class_names: tuple[str, ...],
    support: np.ndarray,
    *,
    image_size: int,
    channels: int,
    data_dir: Path | None = None,
    dedupe: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> TestImages:
    """A labelled folder (``CLASS/*``) or a domain's test split (``NAME`` or ``NAME@test``), its classes mapped
    to `class_names`; images identical to one of `support` ``(n_support, C, H, W)`` are left out.

    Raises:
        DataError: a class the model does not know, nothing left to score, or an unreadable source.
    """
    path = Path(source)
    if path.is_dir():
        ds = load_support(
            path, image_size=image_size, channels=channels, skip_bad=True, max_pixels=max_pixels
        )
        name = f"folder {path}"
    else:
        ds, name = _load_domain(
            str(source), "test", image_size=image_size, channels=channels, data_dir=data_dir, dedupe=dedupe
        )
    unknown = [c for c in ds.class_names if c not in class_names]
    if unknown:
        raise DataError(
            f"--test {source} holds class(es) {', '.join(unknown)} that the teacher does not know; its classes "
            f"are {', '.join(class_names)}: select the teacher's classes (NAME@SPLIT:CLASS,...) or rename folders"
        )
    to_model = np.array([class_names.index(c) for c in ds.class_names], dtype=np.int64)
    keep = ~_identical(ds.images, support)
    if not keep.any():
        raise DataError(f"every image of --test {source} is one of the support images: nothing left to score")
    images, labels = np.ascontiguousarray(ds.images[keep]), to_model[ds.labels[keep]]
    return TestImages(images, labels, f"{len(labels)} image(s) of {name}", int((~keep).sum()))


def drop_test_images(unlabelled: np.ndarray, test: TestImages | None) -> tuple[np.ndarray, int]:
    """`unlabelled` without the images identical to a test image, and how many were dropped.

    Raises:
        DataError: every unlabelled image is a test image.
    """
    if test is None:
        return unlabelled, 0
    same = _identical(unlabelled, test.images)
    if same.all():
        raise DataError("every unlabelled image is also a test image: give --images other than --test")
    return np.ascontiguousarray(unlabelled[~same]), int(same.sum())


def remove_earlier(out: Path, names: list[str]) -> None:
    """Remove an earlier distillation's files (`check_distill_folder` with overwrite); regular files only."""
    for name in names:
        target = out / name
        if OUT_FILES.fullmatch(name) and target.is_file() and not target.is_symlink():
            target.unlink(missing_ok=True)
