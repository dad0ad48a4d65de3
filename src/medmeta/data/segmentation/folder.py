"""A user's own segmentation set: a folder of images with masks, read as a source like the built-in ones.

Three layouts, tried in this order:

* ``FOLDER/manifest.csv`` with columns ``image`` and ``mask`` (paths relative to the folder);
* ``FOLDER/images/`` and ``FOLDER/masks/``, paired by file stem (``case1.png`` with ``case1.png`` or
  ``case1.tif``; ``.nii.gz`` counts as one suffix);
* one folder of ``STEM.EXT`` images beside ``STEM_mask.EXT`` masks (also ``_seg`` or ``_label``).

Images and masks are PNG, JPG, TIFF, BMP, GIF, DICOM or NIfTI (`medmeta.data.readers`). A 2-D image is grey
(RGB is converted to luminance), scaled to ``[0, 1]`` by its type (8-bit / 255, else its 0.5-99.5
percentiles). A NIfTI volume with a NIfTI label volume of the same shape gives its axial slices. A mask with
values {0, 255} or {0, 1} is binary: one structure, ``foreground``; a mask with more values is multi-label,
one structure per value, named by ``FOLDER/labels.json`` (``{"1": "liver", "2": "spleen"}``) or ``label<V>``.
Each image (or volume) is one group, so samplers keep support and query images from different images.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from medmeta.data.readers import NIFTI_SUFFIXES, image_suffix, is_image_file, read_image
from medmeta.data.segmentation.volumes import scale_percentiles, select_slices, to_square
from medmeta.errors import DataError

MANIFEST = "manifest.csv"
LABEL_MAP = "labels.json"
MASK_SUFFIXES = ("_mask", "_seg", "_label")
#: most distinct mask values read as labels (more means the mask is an image, not labels)
MAX_LABELS = 255


def _stem(path: Path) -> str:
    return path.name[: -len(image_suffix(path))]


def _images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and is_image_file(p) and not p.name.startswith(".")
    )


def find_pairs(root: Path) -> list[tuple[str, Path, Path]]:
    """``(group, image, mask)`` of every pair in `root` (see the module docstring for the layouts).

    Raises:
        DataError: not a folder, no pair, an image without its mask, or a manifest naming a missing file.
    """
    if not root.is_dir():
        raise DataError(f"segmentation folder {root} not found: give a folder of images with masks")
    if (root / MANIFEST).is_file():
        return _manifest_pairs(root)
    if (root / "images").is_dir() and (root / "masks").is_dir():
        masks = {_stem(p): p for p in _images(root / "masks")}
        images = _images(root / "images")
        lonely = [p.name for p in images if _stem(p) not in masks]
        if lonely:
            raise DataError(
                f"{root}/images: no mask in {root}/masks with the stem of {', '.join(lonely[:3])}"
                f"{' and more' if len(lonely) > 3 else ''}: add them or remove those images"
            )
        return [(_stem(p), p, masks[_stem(p)]) for p in images]
    files = _images(root)
    masks = {_stem(p)[: -len(s)]: p for p in files for s in MASK_SUFFIXES if _stem(p).endswith(s)}
    images = [p for p in files if p not in masks.values()]
    pairs = [(_stem(p), p, masks[_stem(p)]) for p in images if _stem(p) in masks]
    if not pairs:
        raise DataError(
            f"{root} holds no image/mask pairs: lay it out as images/ + masks/ (same stems), as STEM.png beside "
            f"STEM_mask.png, or list the pairs in {MANIFEST} (columns image, mask)"
        )
    lonely = [p.name for p in images if _stem(p) not in masks]
    if lonely:
        raise DataError(
            f"{root}: no mask for {', '.join(lonely[:3])}{' and more' if len(lonely) > 3 else ''} (expected "
            f"STEM_mask.EXT beside each image): add them or move those images out"
        )
    return pairs


def _manifest_pairs(root: Path) -> list[tuple[str, Path, Path]]:
    path = root / MANIFEST
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "mask"} <= set(rows[0]):
        raise DataError(
            f"{path} needs the columns image and mask (one row per pair), got {list(rows[0]) if rows else 'no rows'}"
        )
    pairs = []
    for n, row in enumerate(rows, start=2):
        image, mask = root / row["image"].strip(), root / row["mask"].strip()
        for p in (image, mask):
            if not p.is_file():
                raise DataError(f"{path} line {n}: {p} not found: fix the path (relative to {root})")
        pairs.append((_stem(image), image, mask))
    return pairs


def label_names(root: Path) -> dict[int, str]:
    """The label map of `root` (``labels.json``), or {} when there is none.

    Raises:
        DataError: a label map that is not a JSON object of integer keys and string names.
    """
    path = root / LABEL_MAP
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        names = {int(k): str(v) for k, v in raw.items()}
    except (ValueError, AttributeError) as exc:
        raise DataError(f'{path} must map label values to names, e.g. {{"1": "liver"}}: {exc}') from None
    return names


def _grey(arr: np.ndarray) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` image -> float32 ``(H, W)`` in [0, 1]."""
    if arr.ndim == 3:
        arr = (
            arr[..., :3].astype(np.float32)
            @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[: arr.shape[-1]]
        )
        return np.clip(arr / 255.0, 0.0, 1.0) if arr.max() <= 255 else scale_percentiles(arr)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return scale_percentiles(arr.astype(np.float32))


def _labels(arr: np.ndarray, path: Path) -> np.ndarray:
    """A mask file's array -> int64 ``(H, W)`` label values (255 of a binary mask becomes 1)."""
    if arr.ndim == 3:
        arr = arr[..., 0]
    values = np.unique(arr)
    if len(values) > MAX_LABELS:
        raise DataError(
            f"mask {path} has {len(values)} distinct values: a mask holds labels (0 = background)"
        )
    out = arr.astype(np.int64)
    if set(values.tolist()) <= {0, 255}:
        out = (out == 255).astype(np.int64)
    return out


def read_pairs(root: Path, pairs: list[tuple[str, Path, Path]]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(group, image, labels)`` 2-D planes: each raster pair, and each axial slice of a NIfTI pair.

    Raises:
        DataError: an unreadable file, or an image and mask of different shapes.
    """
    planes = []
    for group, image_path, mask_path in pairs:
        if image_suffix(image_path) in NIFTI_SUFFIXES and image_suffix(mask_path) in NIFTI_SUFFIXES:
            planes.extend(_volume_planes(group, image_path, mask_path))
            continue
        image, mask = _grey(read_image(image_path)), _labels(read_image(mask_path), mask_path)
        if image.shape != mask.shape:
            raise DataError(
                f"{image_path} is {image.shape} but its mask {mask_path} is {mask.shape}: they must match"
            )
        planes.append((group, image, mask))
    return planes


def _volume_planes(group: str, image_path: Path, mask_path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from medmeta._optional import optional_import

    nib = optional_import("nibabel", "reading NIfTI segmentation volumes")
    volume = np.asarray(nib.load(str(image_path)).dataobj, dtype=np.float32)
    labels = np.asarray(nib.load(str(mask_path)).dataobj).astype(np.int64)
    if volume.shape != labels.shape or volume.ndim != 3:
        raise DataError(
            f"{image_path} is {volume.shape} but {mask_path} is {labels.shape}: need equal 3-D shapes"
        )
    scaled = scale_percentiles(volume)
    keep = sorted(set().union(*(select_slices(labels == v, 1) for v in np.unique(labels) if v != 0)))
    return [(group, scaled[:, :, k], labels[:, :, k]) for k in keep]


def structure_masks(
    planes: list[tuple[str, np.ndarray, np.ndarray]], names: dict[int, str]
) -> dict[str, list[np.ndarray]]:
    """Binary masks per structure name, one ``(H, W)`` per plane (all zero where the structure is absent)."""
    values = sorted(set().union(*(np.unique(m).tolist() for _, _, m in planes)) - {0})
    binary = values == [1] and 1 not in names
    out: dict[str, list[np.ndarray]] = {}
    for v in values:
        name = "foreground" if binary else names.get(v, f"label{v}")
        out[name] = [(m == v).astype(np.float32) for _, _, m in planes]
    return out


def to_model_size(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad to square and resize an image and one binary mask to ``size x size``."""
    return to_square(image, size)[0], to_square(mask, size, is_mask=True)[0]
