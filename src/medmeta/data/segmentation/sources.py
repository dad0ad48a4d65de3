"""Segmentation data: the sets under ``DATA/segmentation`` as *structures* of 2D (image, binary mask) pairs.

A structure is one thing to segment (an organ label of a volume, retinal vessels, EM membranes); few-shot
episodes are drawn from one structure, and training and test structures can be disjoint. Names are
``SOURCE:STRUCTURE``:

* ``drive:vessel``: DRIVE fundus photographs (training and testing folders, 40 images, first observer's
  manual masks ``*_manual1.gif``); green channel. Each 565x584 image is cut into overlapping square tiles
  of ``tile`` native pixels (default 192) so thin vessels survive the resize.
* ``em:membrane``: ISBI-2012 EM stack, ``train/{image,label}/N.png`` (30 single-page 512x512 PNG pairs;
  label 0 = membrane, 255 = cell), tiles of 128 native pixels by default.
* ``ct:NAME`` / ``mr:NAME``: TotalSegmentator example CT (``example_ct_sm.nii.gz`` with
  ``example_seg.nii.gz``) and MR (``example_mr_sm.nii.gz`` with ``example_seg_mr.nii.gz``); NAME from
  `medmeta.data.segmentation.labels` (v2 ``total`` and ``total_mr`` class maps). These labels are TotalSegmentator
  **model output, not manual annotations**. CT uses the W400/L40 window, MR percentile scaling, axial
  slices with at least ``min_pixels`` pixels of the structure (see `medmeta.data.segmentation.volumes`).

Every image is grey ``(1, size, size)`` in ``[0, 1]``; every mask ``(size, size)`` in ``{0, 1}``; samples
whose mask is empty after resizing are dropped. ``groups`` names the source image or volume of each sample
(the patient), so samplers can keep support and query apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from medmeta._optional import optional_import
from medmeta.data.segmentation.labels import TOTAL_CT, TOTAL_MR
from medmeta.data.segmentation.volumes import scale_percentiles, select_slices, to_square, window_ct
from medmeta.errors import DataError

SOURCES = ("drive", "em", "ct", "mr")
DEFAULT_TILES = {"drive": 192, "em": 128}
_VOLUMES = {
    "ct": ("example_ct_sm.nii.gz", "example_seg.nii.gz", TOTAL_CT),
    "mr": ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz", TOTAL_MR),
}


@dataclass(frozen=True)
class SegStructure:
    """All (image, mask) pairs of one structure.

    Attributes:
        name: ``SOURCE:STRUCTURE``.
        images: ``(n, 1, size, size)`` float32 in ``[0, 1]``.
        masks: ``(n, size, size)`` float32 in ``{0, 1}``, none empty.
        groups: source image or volume of each sample.
        pool_index: index of each sample's image in its source's unlabelled pool (`SegSource.images`).
    """

    name: str
    images: Tensor
    masks: Tensor
    groups: tuple[str, ...]
    pool_index: tuple[int, ...]

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[1] != 1:
            raise DataError(f"{self.name}: images must be (n, 1, H, W), got {tuple(self.images.shape)}")
        if self.masks.shape != (n, *self.images.shape[2:]):
            raise DataError(
                f"{self.name}: masks must be (n, H, W) = {(n, *self.images.shape[2:])}, "
                f"got {tuple(self.masks.shape)}"
            )
        if len(self.groups) != n or len(self.pool_index) != n:
            raise DataError(f"{self.name}: need one group and pool index per sample ({n})")

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class SegSource:
    """One data source: its unlabelled image pool and its structures (sample images come from the pool)."""

    name: str
    images: Tensor  # (n_pool, 1, size, size)
    groups: tuple[str, ...]
    structures: dict[str, SegStructure] = field(default_factory=dict)


def _build(
    name: str, pool: list[np.ndarray], groups: list[str], masks: dict[str, list[np.ndarray | None]]
) -> SegSource:
    images = torch.from_numpy(np.stack(pool)[:, None].astype(np.float32))  # (n_pool, 1, S, S)
    source = SegSource(name, images, tuple(groups))
    for struct, per_image in masks.items():
        kept = [(i, m) for i, m in enumerate(per_image) if m is not None and m.any()]
        if not kept:
            continue
        idx = [i for i, _ in kept]
        stacked = np.stack([m for _, m in kept]).astype(np.float32)  # (n, S, S)
        source.structures[f"{name}:{struct}"] = SegStructure(
            f"{name}:{struct}",
            images[idx],
            torch.from_numpy(stacked),
            tuple(groups[i] for i in idx),
            tuple(idx),
        )
    return source


def _read_grey(path: Path, channel: int | None = None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB") if channel is not None else im.convert("L"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    return arr[:, :, channel] if channel is not None else arr


def _tile_starts(length: int, tile: int) -> list[int]:
    if tile >= length:
        return [0]
    n = math.ceil(length / tile)
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _tiles(image: np.ndarray, mask: np.ndarray, tile: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Overlapping square tiles of `tile` native pixels covering the image, each resized to `size`."""
    out = []
    t = min(tile, *image.shape)
    for top in _tile_starts(image.shape[0], t):
        for left in _tile_starts(image.shape[1], t):
            img, _ = to_square(image[top : top + t, left : left + t], size)
            msk, _ = to_square(mask[top : top + t, left : left + t], size, is_mask=True)
            out.append((img, msk))
    return out


def _raster_source(
    name: str,
    struct: str,
    pairs: list[tuple[str, Path, Path]],
    tile: int,
    size: int,
    min_pixels: int,
    **kw: int,
) -> SegSource:
    pool: list[np.ndarray] = []
    groups: list[str] = []
    masks: list[np.ndarray | None] = []
    for group, image_path, mask_path in pairs:
        image = _read_grey(image_path, kw.get("channel")).astype(np.float32) / 255.0
        raw = _read_grey(mask_path)
        mask = (raw < 128) if kw.get("invert") else (raw >= 128)
        if image.shape != mask.shape:
            raise DataError(f"{image_path} is {image.shape} but its mask {mask_path} is {mask.shape}")
        for img, msk in _tiles(image, mask.astype(np.float32), tile, size):
            pool.append(img)
            groups.append(group)
            masks.append(msk if msk.sum() >= min_pixels * (size / tile) ** 2 else None)
    return _build(name, pool, groups, {struct: masks})


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{what} not found at {path}: set --data-dir/MEDMETA_DATA to the shared data folder")
    return path


def load_drive(root: Path, size: int, tile: int = DEFAULT_TILES["drive"], min_pixels: int = 20) -> SegSource:
    """DRIVE vessels: 40 images (training + testing), first observer's masks, green channel, tiled."""
    base = _need(root / "segmentation" / "drive", "DRIVE")
    pairs = []
    for split, suffix in (("training", "training"), ("testing", "test")):
        for img in sorted((base / split / "images").glob(f"*_{suffix}.tif")):
            ident = img.name.split("_")[0]
            pairs.append(
                (f"drive/{ident}", img, _need(base / split / "1st_manual" / f"{ident}_manual1.gif", "mask"))
            )
    if not pairs:
        raise DataError(f"no DRIVE images in {base}/{{training,testing}}/images")
    return _raster_source("drive", "vessel", pairs, tile, size, min_pixels, channel=1)


def load_em(root: Path, size: int, tile: int = DEFAULT_TILES["em"], min_pixels: int = 20) -> SegSource:
    """ISBI-2012 EM membranes: 30 PNG pairs, membrane = label 0, tiled."""
    base = _need(root / "segmentation" / "isbi2012_em" / "train", "ISBI-2012 EM")
    images = sorted((base / "image").glob("*.png"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
    if not images:
        raise DataError(f"no EM images in {base / 'image'}")
    pairs = [(f"em/{p.stem}", p, _need(base / "label" / p.name, "EM label")) for p in images]
    return _raster_source("em", "membrane", pairs, tile, size, min_pixels, invert=1)


def load_volume_source(root: Path, modality: str, size: int, min_pixels: int = 20) -> SegSource:
    """TotalSegmentator example CT or MR: axial slices, one structure per label present (model output)."""
    if modality not in _VOLUMES:
        raise DataError(f"unknown volume source '{modality}': choose one of {', '.join(_VOLUMES)}")
    nib = optional_import("nibabel", "reading the TotalSegmentator NIfTI volumes")
    image_file, label_file, names = _VOLUMES[modality]
    base = root / "segmentation" / "totalseg_example"
    volume = np.asarray(nib.load(str(_need(base / image_file, "volume"))).dataobj, dtype=np.float32)
    labels = np.asarray(nib.load(str(_need(base / label_file, "labels"))).dataobj).astype(np.int64)
    if volume.shape != labels.shape:
        raise DataError(f"{image_file} is {volume.shape} but {label_file} is {labels.shape}")
    scaled = window_ct(volume) if modality == "ct" else scale_percentiles(volume)
    n_slices = volume.shape[2]
    pool = [to_square(scaled[:, :, k], size)[0] for k in range(n_slices)]
    groups = [f"{modality}/{image_file}"] * n_slices
    masks: dict[str, list[np.ndarray | None]] = {}
    for label in np.unique(labels):
        if label == 0 or label > len(names):
            continue
        binary = labels == label
        per: list[np.ndarray | None] = [None] * n_slices
        for k in select_slices(binary, min_pixels):
            per[k] = to_square(binary[:, :, k].astype(np.float32), size, is_mask=True)[0]
        masks[names[label - 1]] = per
    return _build(modality, pool, groups, masks)


def load_folder_source(folder: Path, size: int, tile: int | None = None, min_pixels: int = 20) -> SegSource:
    """A user's folder of images with masks (`medmeta.data.segmentation.folder`): every 2-D plane (an image,
    or a slice of a volume), whole (zero-padded to a square) or cut into overlapping tiles of `tile` native
    pixels, resized to `size`."""
    from medmeta.data.segmentation.folder import find_pairs, label_names, read_pairs, structure_masks

    planes = read_pairs(folder, find_pairs(folder))
    per_structure = structure_masks(planes, label_names(folder))
    if not per_structure:
        raise DataError(f"every mask in {folder} is empty (all 0): label the structures (non-zero values)")
    name = str(folder)
    pool: list[np.ndarray] = []
    groups: list[str] = []
    masks: dict[str, list[np.ndarray | None]] = {k: [] for k in per_structure}
    for p, (group, image, _) in enumerate(planes):
        side = tile if tile is not None else max(image.shape)
        if tile is None:  # the whole plane, zero-padded to a square
            cuts = {
                k: [(to_square(image, size)[0], to_square(m[p], size, is_mask=True)[0])]
                for k, m in per_structure.items()
            }
        else:
            cuts = {k: _tiles(image, m[p], side, size) for k, m in per_structure.items()}
        for t in range(len(next(iter(cuts.values())))):
            pool.append(next(iter(cuts.values()))[t][0])
            groups.append(f"{name}/{group}")
            for k, pieces in cuts.items():
                msk = pieces[t][1]
                masks[k].append(msk if msk.sum() >= min_pixels * (size / side) ** 2 else None)
    return _build(name, pool, groups, masks)


def is_folder_spec(source: str) -> bool:
    """True when a spec's source part names a folder (a user's own set) rather than a built-in source."""
    return source not in SOURCES and ("/" in source or source.startswith(".") or Path(source).is_dir())


def load_source(
    name: str, root: Path, size: int, *, min_pixels: int = 20, tiles: dict[str, int] | None = None
) -> SegSource:
    """Load one source by name (see `SOURCES`) or a user's folder of images with masks (its path)."""
    if is_folder_spec(name):
        return load_folder_source(Path(name), size, (tiles or {}).get(name), min_pixels)
    tiles = {**DEFAULT_TILES, **(tiles or {})}
    if name == "drive":
        return load_drive(root, size, tiles["drive"], min_pixels)
    if name == "em":
        return load_em(root, size, tiles["em"], min_pixels)
    if name in _VOLUMES:
        return load_volume_source(root, name, size, min_pixels)
    raise DataError(
        f"unknown segmentation source '{name}': choose one of {', '.join(SOURCES)} or a folder of images with masks"
    )


def parse_spec(spec: str) -> tuple[str, list[str] | None]:
    """``"ct:liver,spleen"`` -> ``("ct", ["liver", "spleen"])``; ``"ct"`` -> ``("ct", None)`` (all).

    A folder path is a source too: ``"my/set"`` (every structure) or ``"my/set:foreground"``.
    """
    if Path(spec).is_dir():
        return spec, None
    source, _, rest = (
        spec.rpartition(":")
        if ":" in spec and Path(spec.rpartition(":")[0]).is_dir()
        else spec.partition(":")
    )
    source = source.strip()
    if source not in SOURCES and not is_folder_spec(source):
        raise DataError(
            f"structure spec '{spec}': unknown source '{source}'; choose one of {', '.join(SOURCES)} or give a "
            "folder of images with masks"
        )
    if is_folder_spec(source) and not Path(source).is_dir():
        raise DataError(f"structure spec '{spec}': folder {source} not found: check the path")
    names = [n.strip() for n in rest.split(",") if n.strip()] if rest else None
    return source, names


def select_structures(
    sources: dict[str, SegSource], specs: list[str], exclude: set[str] | None = None
) -> dict[str, SegStructure]:
    """The structures named by `specs` (``SOURCE`` = all of that source), minus those in `exclude`.

    Raises:
        DataError: a named structure is absent (the message lists the available ones).
    """
    out: dict[str, SegStructure] = {}
    for spec in specs:
        source, names = parse_spec(spec)
        available = sources[source].structures
        if names is None:
            picked = list(available)
        else:
            picked = [f"{source}:{n}" for n in names]
            missing = [p for p in picked if p not in available]
            if missing:
                raise DataError(
                    f"structure(s) {', '.join(missing)} not found (or empty at this min_pixels); "
                    f"available: {', '.join(sorted(available))}"
                )
        for p in picked:
            if p not in (exclude or set()):
                out[p] = available[p]
    if not out:
        raise DataError(f"no structure left from {specs} after excluding {sorted(exclude or [])}")
    return out
