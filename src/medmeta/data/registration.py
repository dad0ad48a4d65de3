"""Image pools for registration: real 2D planes with optional label maps, grouped by volume or subject.

* ``ct`` / ``mr``: every axial slice of the TotalSegmentator example CT or MR (the files and windowing of
  `medmeta.data.segmentation.sources`), reoriented to the closest canonical (RAS) axes so CT and MR slices
  share one orientation, with its multi-label map (TotalSegmentator model output). One volume
  each, so ``groups`` is one name and ``positions`` the slice index: pairs of different slices come from it.
* ``brain``: brain MRI slices (``classification/brain_tumor_mri/{train,test}``), no labels; each image is
  its own group (the set does not name patients).

Images are ``(1, size, size)`` in ``[0, 1]`` after the square pad-and-resize of
`medmeta.data.segmentation.volumes.to_square`; label maps are resized per label the same way (area average,
threshold at 0.5) so they stay on the image's grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from medmeta._optional import optional_import
from medmeta.data.segmentation.io import read_plane
from medmeta.data.segmentation.sources import _VOLUMES
from medmeta.data.segmentation.volumes import scale_percentiles, to_square, window_ct
from medmeta.errors import DataError

POOLS = ("ct", "mr", "brain")


@dataclass(frozen=True)
class RegPool:
    """Real planes to build registration pairs from.

    Attributes:
        name: the pool (``ct``, ``mr``, ``brain`` or a file name).
        images: ``(M, 1, H, W)`` float32 in ``[0, 1]``.
        labels: ``(M, H, W)`` int64 label maps (0 = background), or None.
        groups: volume or subject of each plane.
        positions: slice index of each plane within its group.
    """

    name: str
    images: Tensor
    labels: Tensor | None
    groups: tuple[str, ...]
    positions: tuple[int, ...]

    def __post_init__(self) -> None:
        m = self.images.shape[0]
        if self.images.ndim != 4 or self.images.shape[1] != 1 or m == 0:
            raise DataError(f"pool images must be (M, 1, H, W) with M >= 1, got {tuple(self.images.shape)}")
        if self.labels is not None and tuple(self.labels.shape) != (m, *self.images.shape[2:]):
            raise DataError(
                f"pool labels must be {(m, *self.images.shape[2:])}, got {tuple(self.labels.shape)}"
            )
        if len(self.groups) != m or len(self.positions) != m:
            raise DataError(f"pool needs one group and position per image ({m}), got {len(self.groups)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: list[int] | np.ndarray) -> RegPool:
        """The planes at `index` (a train/test split by slice or subject)."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return RegPool(
            self.name,
            self.images[idx],
            None if self.labels is None else self.labels[idx],
            tuple(self.groups[int(i)] for i in idx),
            tuple(self.positions[int(i)] for i in idx),
        )


def square_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """``(H, W)`` integer label map -> ``(size, size)`` int64, each label resized like a mask by `to_square`."""
    out = np.zeros((size, size), dtype=np.int64)
    for value in np.unique(labels):
        if value == 0:
            continue
        out[to_square((labels == value).astype(np.float32), size, is_mask=True)[0] > 0] = int(value)
    return out


def load_volume_pool(root: Path, modality: str, size: int) -> RegPool:
    """Every axial slice of the example CT or MR with its label map.

    Raises:
        DataError: unknown modality, missing files, or image and labels of different shapes.
    """
    if modality not in _VOLUMES:
        raise DataError(f"unknown volume '{modality}': choose one of {', '.join(_VOLUMES)}")
    nib = optional_import("nibabel", "reading the TotalSegmentator NIfTI volumes")
    image_file, label_file, _ = _VOLUMES[modality]
    base = root / "segmentation" / "totalseg_example"
    for f in (image_file, label_file):
        if not (base / f).is_file():
            raise DataError(f"{base / f} not found: set MEDMETA_DATA to the shared data folder")
    volume = np.asarray(nib.as_closest_canonical(nib.load(str(base / image_file))).dataobj, dtype=np.float32)
    labels = np.asarray(nib.as_closest_canonical(nib.load(str(base / label_file))).dataobj).astype(np.int64)
    if volume.shape != labels.shape:
        raise DataError(f"{image_file} is {volume.shape} but {label_file} is {labels.shape}")
    scaled = window_ct(volume) if modality == "ct" else scale_percentiles(volume)
    k = volume.shape[2]
    images = np.stack([to_square(scaled[:, :, i], size)[0] for i in range(k)])[:, None]  # (K, 1, size, size)
    maps = np.stack([square_labels(labels[:, :, i], size) for i in range(k)])  # (K, size, size)
    return RegPool(
        modality,
        torch.from_numpy(images),
        torch.from_numpy(maps),
        (f"{modality}/{image_file}",) * k,
        tuple(range(k)),
    )


def load_brain_pool(root: Path, split: str, size: int, limit: int, seed: int = 0) -> RegPool:
    """Up to `limit` brain MRI slices of `split` (``train`` or ``test``), drawn with `seed`, no labels.

    Raises:
        DataError: unknown split or no image found.
    """
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got '{split}'")
    folder = root / "classification" / "brain_tumor_mri" / split
    files = sorted(folder.glob("*/*.jpg"))
    if not files:
        raise DataError(f"no brain MRI image under {folder}: set MEDMETA_DATA to the shared data folder")
    order = np.random.default_rng(seed).permutation(len(files))[:limit]
    chosen = [files[i] for i in sorted(order)]
    images = np.stack([to_square(read_plane(p), size)[0] for p in chosen])[:, None]  # (M, 1, size, size)
    names = tuple(f"brain/{split}/{p.parent.name}/{p.name}" for p in chosen)
    return RegPool("brain", torch.from_numpy(images), None, names, (0,) * len(chosen))


def load_pool(name: str, root: Path, size: int, *, split: str = "train", limit: int = 200) -> RegPool:
    """A pool by name (see `POOLS`)."""
    if name in ("ct", "mr"):
        return load_volume_pool(root, name, size)
    if name == "brain":
        return load_brain_pool(root, split, size, limit)
    raise DataError(f"unknown registration pool '{name}': choose one of {', '.join(POOLS)}")


def relabel(labels: Tensor, source: tuple[str, ...], target: tuple[str, ...]) -> Tensor:
    """Label maps whose ids name `source` classes (id ``i`` = ``source[i - 1]``) renumbered to `target`'s ids
    by class name; classes `target` lacks become background."""
    lut = torch.zeros(len(source) + 1, dtype=torch.int64)
    index = {name: i + 1 for i, name in enumerate(target)}
    for i, name in enumerate(source):
        lut[i + 1] = index.get(name, 0)
    return lut[labels.clamp(0, len(source))]


def cross_modal_pool(root: Path, size: int) -> RegPool:
    """The example CT and MR in one pool, MR labels renumbered to the CT's label ids by organ name, so
    ``subjects`` pairs across the two volumes (CT against MR, different subjects) can be scored by Dice."""
    ct, mr = load_volume_pool(root, "ct", size), load_volume_pool(root, "mr", size)
    assert ct.labels is not None and mr.labels is not None  # volume pools always carry labels
    _, _, ct_names = _VOLUMES["ct"]
    _, _, mr_names = _VOLUMES["mr"]
    return RegPool(
        "ct+mr",
        torch.cat([ct.images, mr.images]),
        torch.cat([ct.labels, relabel(mr.labels, tuple(mr_names), tuple(ct_names))]),
        ct.groups + mr.groups,
        ct.positions + mr.positions,
    )
