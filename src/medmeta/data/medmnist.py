"""MedMNIST v2: read the official ``.npz`` files and download them with checksums.

The table of datasets (class names, task, sizes, URLs, MD5s) lives in `medmeta.data.medmnist_info`.

Example:
    >>> path = download_medmnist("bloodmnist", 64, root=data_root())  # doctest: +SKIP
    >>> ds = load_medmnist_npz(path, domain="bloodmnist", channels=3)  # doctest: +SKIP
    >>> ds.images.shape  # doctest: +SKIP
    (17092, 3, 64, 64)
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from medmeta.data.datasets import ImageDataset
from medmeta.data.medmnist_info import INFO, MedMNISTInfo, get_info, info_for
from medmeta.data.transforms import convert_batch, convert_volumes, to_uint8
from medmeta.errors import DataError

__all__ = ["INFO", "MedMNISTInfo", "download_medmnist", "info_for", "load_medmnist_npz"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EXPECTED_KEYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))
BASE_URL_ENV = "MEDMETA_MEDMNIST_URL"
_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def load_medmnist_npz(
    path: str | os.PathLike[str],
    *,
    domain: str,
    class_names: tuple[str, ...] | list[str] | None = None,
    channels: int = 3,
    image_size: int | None = None,
) -> ImageDataset:
    """Read a MedMNIST ``.npz`` file (official layout) into one `ImageDataset` with its splits.

    The file holds ``{train,val,test}_images`` as ``(N, H, W)`` grey, ``(N, H, W, 3)`` RGB or
    ``(N, D, H, W)`` volumes, and ``{train,val,test}_labels`` as ``(N, 1)`` or ``(N,)``. Whether
    ``(N, A, B, C)`` is a volume comes from the MedMNIST table when `domain` or the file name is a
    known dataset, else from the last axis (1, 3 or 4 means channels).

    Args:
        path: the ``.npz`` file.
        domain: name shown in reports, for example ``"breastmnist"`` or a file stem such as
            ``"breastmnist_resaved"``.
        class_names: name of each class id; default: the official names when `domain` (or the file
            name) matches a MedMNIST dataset (see `info_for`), else ``class_0``, ``class_1``, ...
        channels: 1 (grey) or 3 (RGB) in the result.
        image_size: side of the result (2D: centre crop and bilinear; 3D: trilinear); None keeps
            the stored size.

    Returns:
        An `ImageDataset` with images ``(N, channels, S, S)`` or ``(N, channels, S, S, S)``, int64
        labels ``(N,)`` and `splits` ``(N,)`` holding ``"train"``, ``"val"`` and ``"test"``, in that
        order.

    Raises:
        DataError: the file is missing, unreadable or truncated, lacks a key, holds multi-label
            labels (chestmnist), or its shapes disagree.
    """
    path = Path(path)
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if not path.is_file():
        raise DataError(f"{path} does not exist: check the path, or download it with download_medmnist")
    info = info_for(domain) or info_for(path.stem)
    if info is not None and info.multi_label:
        raise DataError(_multi_label_message(path, info.name, len(info.class_names)))
    arrays = _read_npz(path)
    parts: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    split_names: list[np.ndarray] = []
    for split in SPLITS:
        images, split_labels = _split_arrays(path, split, arrays)
        if len(split_labels) == 0:
            continue
        parts.append(_convert(path, images, info, channels, image_size))
        labels.append(split_labels)
        split_names.append(np.full(len(split_labels), split))
    if not parts:
        raise DataError(f"{path} holds no images in any split: delete it and download again")
    all_labels = np.concatenate(labels)  # (N,)
    if class_names is None:
        if info is not None:
            class_names = info.class_names
        else:
            class_names = tuple(f"class_{i}" for i in range(int(all_labels.max()) + 1))
    return ImageDataset(
        images=np.concatenate(parts),  # (N, C, H, W) or (N, C, D, H, W)
        labels=all_labels,
        class_names=tuple(class_names),
        domain=domain,
        splits=np.concatenate(split_names),
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every expected array of `path`, fully read, so that a truncated member fails here."""
    try:
        # open the file here: np.load leaks its handle when the zip directory is unreadable
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            missing = [k for k in EXPECTED_KEYS if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path} lacks {', '.join(missing)}: expected keys {', '.join(EXPECTED_KEYS)} "
                    f"(the official MedMNIST layout), found {', '.join(npz.files) or 'none'}"
                )
            return {k: np.asarray(npz[k]) for k in EXPECTED_KEYS}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(
            f"{path} is not a readable .npz file ({type(exc).__name__}: {exc}): "
            "it is probably truncated or corrupt; delete it and download again"
        ) from exc


def _split_arrays(path: Path, split: str, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of one split, labels flattened to int64 ``(N,)``."""
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise DataError(_multi_label_message(path, path.stem, labels.shape[1]))
    if labels.ndim not in (1, 2) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: {split}_labels must be integers of shape (N,) or (N, 1), "
            f"got {labels.dtype} {labels.shape}"
        )
    flat = labels.reshape(-1).astype(np.int64)  # (N,)
    if images.shape[:1] != flat.shape:
        raise DataError(
            f"{path}: {split}_images holds {images.shape[0] if images.ndim else 0} images but "
            f"{split}_labels holds {len(flat)}: delete it and download again"
        )
    return images, flat


def _multi_label_message(path: Path, name: str, n_labels: int) -> str:
    return (
        f"{path} ({name}) is multi-label ({n_labels} labels per image); few-shot classification "
        "needs one label per image: use another MedMNIST set"
    )


def _convert(
    path: Path,
    images: np.ndarray,
    info: MedMNISTInfo | None,
    channels: int,
    image_size: int | None,
) -> np.ndarray:
    """``(N, H, W[, C])`` or ``(N, D, H, W)`` -> ``(N, channels, ...)`` uint8 at `image_size`."""
    if info is not None:
        is_3d = info.spatial_dims == 3
    else:
        is_3d = images.ndim == 4 and images.shape[-1] not in (1, 3, 4)
    expected = (4,) if is_3d else (3, 4)
    if images.ndim not in expected:
        layout = "(N, D, H, W)" if is_3d else "(N, H, W) or (N, H, W, C)"
        raise DataError(f"{path}: images must be {layout}, got shape {images.shape}")
    if images.dtype != np.uint8:
        images = np.stack([to_uint8(im) for im in images])
    if is_3d:
        return convert_volumes(images, channels, image_size)  # (N, channels, S, S, S)
    return convert_batch(images, channels, image_size)  # (N, channels, S, S)


def download_medmnist(
    name: str,
    size: int = 28,
    *,
    root: str | os.PathLike[str],
    base_url: str | None = None,
    progress: bool = True,
    timeout: float = 60,
    expected_md5: str | None = None,
) -> Path:
    """Download one official MedMNIST file into ``root/medmnist/`` and verify its MD5.

    A file already there with the right MD5 is returned without network access. The download goes
    to ``FILE.part``, resumes it with an HTTP Range request when one exists (and restarts from zero
    when the server ignores the range), and is renamed atomically to ``FILE`` only after its MD5
    matches; a mismatching download is deleted.

    Args:
        name: official name, for example ``"bloodmnist"`` (see `INFO`).
        size: 28, 64, 128 or 224 (2D); 28 or 64 (3D).
        root: data root; the file lands in ``root/medmnist/NAME[_SIZE].npz``.
        base_url: folder URL holding the file (a mirror or a local test server); default
            ``$MEDMETA_MEDMNIST_URL``, else the official Zenodo record.
        progress: show a progress bar on stderr.
        timeout: seconds to wait on the connection before giving up.
        expected_md5: MD5 the file must have; None uses the official one from the table.

    Returns:
        Path of the verified file.

    Raises:
        DataError: unknown name or size, a network or HTTP error (naming the URL), or a checksum
            mismatch.
    """
    info = get_info(name)
    filename = info.filename(size)
    md5 = (expected_md5 if expected_md5 is not None else info.md5_for(size)).lower()
    folder = Path(root) / "medmnist"
    final = folder / filename
    if final.is_file():
        if _md5(final) == md5:
            return final
        logger.warning("%s exists but its MD5 is not %s; downloading it again", final, md5)
    base = base_url or os.environ.get(BASE_URL_ENV)
    url = f"{base.rstrip('/')}/{filename}" if base else info.url(size)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {folder} ({exc}): choose another --data-dir") from exc
    part = folder / f"{filename}.part"
    if not (part.is_file() and _md5(part) == md5):  # a finished .part needs no request
        _fetch(url, part, timeout=timeout, progress=progress)
    got = _md5(part)
    if got != md5:
        part.unlink(missing_ok=True)
        raise DataError(
            f"checksum mismatch for {filename}: expected {md5}, got {got}; "
            "the download was deleted, try again or check --base-url"
        )
    os.replace(part, final)
    logger.info("downloaded %s to %s", url, final)
    return final


def _fetch(url: str, part: Path, *, timeout: float, progress: bool) -> None:
    """Download `url` into `part`, resuming from its current length when the server allows it."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "medmeta"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part is as long as the file or longer: restart
            part.unlink()
            _fetch(url, part, timeout=timeout, progress=progress)
            return
        raise DataError(
            f"cannot download {url}: HTTP {exc.code} {exc.reason}; check the name and size, or --base-url"
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise DataError(f"cannot download {url}: {exc}; check the network connection or --base-url") from exc
    with response:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if response.status == 206 and match is not None and int(match.group(1)) == offset:
            mode = "ab"
        else:  # the server ignored the range (or answered another one): restart from zero
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        written = offset
        try:
            with open(part, mode) as out, _progress_bar(part.stem, total, offset, progress) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    written += len(chunk)
                    bar(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            raise DataError(
                f"download of {url} stopped at {written} of {total or '?'} bytes ({exc}); run again to resume"
            ) from exc
    if total is not None and written < total:
        raise DataError(f"download of {url} stopped at {written} of {total} bytes; run again to resume")


@contextmanager
def _progress_bar(
    description: str, total: int | None, completed: int, enabled: bool
) -> Iterator[Callable[[int], None]]:
    """A rich download bar on stderr; yields a callable that advances it by n bytes."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total, completed=completed)
        yield lambda n: bar.advance(task, n)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
