"""Reading a practitioner's images: a support folder (``CLASS/*``) and query files or folders.

Every image, whatever its format (PNG, JPEG, TIFF, BMP, 16-bit, DICOM, NIfTI), size or number of channels,
is converted exactly as the training data were: intensities scaled to uint8 (16-bit, DICOM and NIfTI
windowed to the 0.5-99.5 percentiles), grey repeated to RGB or RGB turned grey by luminance to match the
model's channels, then centre-cropped to a square and resized (bilinear) to the model's image size.
DICOM files are read for their pixels only. An image declaring more than `max_pixels` pixels (default
50 MP) is refused before decoding; one above 4 MP is shrunk while decoding to about twice the model size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medmeta.data.datasets import ImageDataset
from medmeta.data.folder import SPLIT_NAMES, load_image_folder
from medmeta.data.readers import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    UnreadableImageError,
    is_image_file,
    read_image,
)
from medmeta.data.transforms import resize_2d, to_channels_first, to_uint8
from medmeta.errors import DataError

logger = logging.getLogger(__name__)


def load_support(
    folder: str | Path,
    *,
    image_size: int,
    channels: int,
    min_shots: int = 1,
    skip_bad: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageDataset:
    """Read a support set laid out as ``folder/CLASS/*`` at the model's input size.

    Args:
        folder: one sub-folder per class, each holding that class's labelled images.
        image_size: side of the square model input.
        channels: 1 or 3, the model's input channels.
        min_shots: fewest images a class may have.
        skip_bad: skip unreadable files (they are listed in ``dataset.skipped``) instead of stopping.
        max_pixels: most pixels an image may declare; a larger one is unreadable (checked before decoding).

    Returns:
        An `ImageDataset` ``(n_support, channels, image_size, image_size)`` with the class names.

    Raises:
        DataError: missing folder, a ``train/val/test`` layout, fewer than two classes, a class with fewer
            than `min_shots` readable images, or (without `skip_bad`) an unreadable file.
    """
    root = Path(folder)
    if root.is_dir():
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if subdirs and all(p.name in SPLIT_NAMES for p in subdirs):
            raise DataError(
                f"support folder {root} is split into {', '.join(p.name for p in subdirs)}: give one split, "
                f"e.g. {subdirs[0]}, laid out as CLASS/images"
            )
        for d in subdirs:
            if not any(is_image_file(f) for f in d.rglob("*")):
                raise DataError(
                    f"class folder {d} holds no image ({', '.join(IMAGE_SUFFIXES)}): add at least "
                    f"{min_shots} image(s) or remove the folder"
                )
    ds = load_image_folder(
        root, image_size=image_size, channels=channels, skip_bad=skip_bad, max_pixels=max_pixels
    )
    if ds.n_classes < 2:
        raise DataError(
            f"support folder {root} has {ds.n_classes} class ({', '.join(ds.class_names)}): a classifier "
            "needs at least two class folders"
        )
    counts = ds.class_counts()
    short = {c: n for c, n in counts.items() if n < min_shots}
    if short:
        listed = ", ".join(f"{c} ({n})" for c, n in short.items())
        raise DataError(
            f"support folder {root}: too few readable images for class(es) {listed}; each class needs at "
            f"least {min_shots}: add images or lower --min-shots"
        )
    return ds


def list_image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The image files named by `paths`: files as given, folders searched recursively (sorted).

    Raises:
        DataError: a path does not exist, a named file is not an image type, or nothing is found.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if is_image_file(f))
            if not found:
                raise DataError(f"folder {p} holds no image ({', '.join(IMAGE_SUFFIXES)})")
            out += found
        elif p.is_file():
            if not is_image_file(p):
                raise DataError(f"{p} is not an image file: supported types are {', '.join(IMAGE_SUFFIXES)}")
            out.append(p)
        else:
            raise DataError(f"{p} does not exist: give image files or folders of images")
    if not out:
        raise DataError("no query image given: pass image files or folders")
    return out


def read_model_image(
    path: str | Path, *, image_size: int, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """One image file as the model sees it: uint8 ``(channels, image_size, image_size)``.

    Raises:
        UnreadableImageError: the file cannot be decoded or declares more than `max_pixels` pixels.
    """
    raw = read_image(path, max_pixels=max_pixels, working_size=image_size)
    if raw.ndim == 3 and raw.shape[-1] not in (1, 3, 4):
        raise UnreadableImageError(f"cannot read image {path}: shape {raw.shape} is not a 2-D image")
    return resize_2d(to_channels_first(to_uint8(raw), channels), image_size)


@dataclass
class QueryImages:
    """Query images read for a model.

    Attributes:
        images: uint8 ``(n_query, C, H, W)``.
        files: the path of each image, as given or found.
        skipped: ``(path, reason)`` of each unreadable file.
    """

    images: np.ndarray
    files: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def load_queries(
    paths: Sequence[str | Path],
    *,
    image_size: int,
    channels: int,
    skip_bad: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> QueryImages:
    """Read query images; unreadable files are skipped and reported (or raise without `skip_bad`).

    An image declaring more than `max_pixels` pixels is unreadable (refused before decoding).

    Raises:
        DataError: nothing readable, or (without `skip_bad`) an unreadable file.
    """
    files = list_image_files(paths)
    images: list[np.ndarray] = []
    kept: list[str] = []
    skipped: list[tuple[str, str]] = []
    for f in files:
        try:
            images.append(
                read_model_image(f, image_size=image_size, channels=channels, max_pixels=max_pixels)
            )
            kept.append(str(f))
        except UnreadableImageError as exc:
            if not skip_bad:
                raise
            logger.warning("skipping unreadable query image %s", f)
            skipped.append((str(f), str(exc)))
    if not images:
        raise DataError(f"none of the {len(files)} query file(s) could be read: check their format")
    return QueryImages(np.stack(images), kept, skipped)
