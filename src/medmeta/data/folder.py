"""Image folders: ``root/CLASS/*.{png,jpg,...}`` or ``root/{train,val,test}/CLASS/*``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medmeta.data.datasets import ImageDataset
from medmeta.data.readers import DEFAULT_MAX_PIXELS, UnreadableImageError, is_image_file, read_image
from medmeta.data.transforms import resize_2d, to_channels_first, to_uint8
from medmeta.errors import DataError

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_image_folder(root: str | Path) -> list[tuple[Path, str, str | None]]:
    """List ``(file, class_name, split)`` for every image below `root`, sorted.

    Raises:
        DataError: `root` is missing, not a folder, or holds no class folder with images.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"folder {root} does not exist: check the path or --data-dir")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give a folder laid out as CLASS/image files")
    subdirs = _class_dirs(root)
    split_dirs = [d for d in subdirs if d.name in SPLIT_NAMES]
    entries: list[tuple[Path, str, str | None]] = []
    if split_dirs and len(split_dirs) == len(subdirs):
        for split_dir in split_dirs:
            for class_dir in _class_dirs(split_dir):
                entries += [(f, class_dir.name, split_dir.name) for f in _files(class_dir)]
    else:
        for class_dir in subdirs:
            entries += [(f, class_dir.name, None) for f in _files(class_dir)]
    if not entries:
        raise DataError(
            f"folder {root} holds no images: lay it out as {root}/CLASS/*.png (or .jpg, .dcm, .nii.gz, ...)"
        )
    return entries


def _files(class_dir: Path) -> list[Path]:
    out = []
    for dirpath, _dirs, names in os.walk(class_dir):
        out += [Path(dirpath) / n for n in names if is_image_file(Path(dirpath) / n)]
    return sorted(out)


def load_image_folder(
    root: str | Path,
    *,
    domain: str | None = None,
    image_size: int = 64,
    channels: int = 3,
    skip_bad: bool = False,
    nifti_slice: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageDataset:
    """Read every image below `root` into an `ImageDataset` at ``(channels, image_size, image_size)``.

    Grey, RGB and 16-bit images are accepted; 16-bit, DICOM and NIfTI intensities are windowed to uint8
    (0.5-99.5 percentiles); NIfTI volumes contribute one slice (`nifti_slice`, default the middle one).

    Args:
        root: folder laid out as ``CLASS/*`` or ``{train,val,test}/CLASS/*``.
        domain: name shown in reports (default: the folder name).
        image_size: side of the square images after centre crop and resize.
        channels: 1 (grey) or 3 (RGB).
        skip_bad: skip unreadable files (listed in ``dataset.skipped``) instead of stopping.
        progress: called as ``progress(done, total)`` while reading.
        max_pixels: most pixels an image may declare (checked before decoding; above it the image is
            unreadable). Large images are shrunk early to about twice `image_size` (see `read_image`).

    Raises:
        DataError: missing/empty folder, or an unreadable image when `skip_bad` is False.
    """
    root = Path(root)
    entries = scan_image_folder(root)
    class_names = tuple(sorted({c for _f, c, _s in entries}))
    class_index = {c: i for i, c in enumerate(class_names)}
    images: list[np.ndarray] = []
    labels: list[int] = []
    splits: list[str] = []
    files: list[str] = []
    skipped: list[str] = []
    for n, (path, cls, split) in enumerate(entries):
        try:
            raw = read_image(path, nifti_slice=nifti_slice, max_pixels=max_pixels, working_size=image_size)
        except UnreadableImageError as exc:
            if not skip_bad:
                raise type(exc)(f"{exc}; remove the file or pass --skip-bad") from exc
            logger.warning("skipping unreadable image %s", path)
            skipped.append(str(path.relative_to(root)))
            continue
        img = to_channels_first(to_uint8(raw), channels)  # (C, H, W)
        images.append(resize_2d(img, image_size))
        labels.append(class_index[cls])
        splits.append(split or "")
        files.append(str(path.relative_to(root)))
        if progress is not None:
            progress(n + 1, len(entries))
    if not images:
        raise DataError(f"no readable image in {root}: every file failed to decode")
    has_splits = any(splits)
    present = sorted(set(labels))
    if len(present) != len(class_names):  # a class whose every file was skipped
        kept = [class_names[i] for i in present]
        remap = {old: new for new, old in enumerate(present)}
        labels = [remap[label] for label in labels]
        class_names = tuple(kept)
    return ImageDataset(
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=class_names,
        domain=domain or root.name,
        splits=np.asarray(splits) if has_splits else None,
        files=np.asarray(files),
        skipped=tuple(skipped),
    )
