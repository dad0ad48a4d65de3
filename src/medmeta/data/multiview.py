"""Cases seen as several images: views, slices or modalities of one patient, grouped into one sample.

A multi-view set is an `ImageDataset` whose channel axis holds the views, one grey image each: images
``(N, V, H, W)`` uint8, with the view names beside it. Episodes, splits and samplers then work unchanged
(an episode draws cases, never a lone view of a case), and `medmeta.models.fusion` /
`medmeta.methods.fusion` decide how the views are combined.

Where the views come from:
    - a 3-D set (``(N, 1, D, H, W)``, e.g. AdrenalMNIST3D): ``orthogonal`` (the central axial, coronal and
      sagittal slices) or ``slices:K`` (K evenly spaced axial slices of the central half of the volume);
    - a folder of cases, ``ROOT/CLASS/CASE/VIEW.png`` (every case holds the same view names, e.g.
      ``frontal.png`` and ``lateral.png``), or ``ROOT/manifest.csv`` with columns ``case, view, path, label``
      (paths relative to ROOT).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmeta.data.datasets import ImageDataset
from medmeta.data.readers import read_image
from medmeta.data.segmentation.volumes import to_square
from medmeta.errors import DataError

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm"}


@dataclass(frozen=True)
class MultiViewSet:
    """Cases with their views as channels.

    Attributes:
        dataset: images ``(N, V, H, W)`` uint8, one grey view per channel.
        views: the name of each channel's view.
    """

    dataset: ImageDataset
    views: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.dataset.spatial_dims != 2 or self.dataset.channels != len(self.views):
            raise DataError(
                f"{self.dataset.domain}: a multi-view set needs images (N, V, H, W) with V = {len(self.views)} "
                f"views, got {self.dataset.images.shape}"
            )


def parse_views(spec: str) -> tuple[str, int]:
    """``orthogonal`` or ``slices:K`` -> (kind, K) (K = 3 for orthogonal).

    Raises:
        DataError: any other text, or K outside 2..16.
    """
    if spec == "orthogonal":
        return "orthogonal", 3
    kind, _, k = spec.partition(":")
    if kind == "slices" and k.isdigit() and 2 <= int(k) <= 16:
        return "slices", int(k)
    raise DataError(f"views '{spec}': write orthogonal or slices:K with K from 2 to 16 (e.g. slices:3)")


def views_from_volumes(dataset: ImageDataset, spec: str = "orthogonal") -> MultiViewSet:
    """The views of every volume of a 3-D set (see the module docstring).

    Raises:
        DataError: not a one-channel 3-D set, or a bad `spec`.
    """
    kind, k = parse_views(spec)
    if dataset.spatial_dims != 3 or dataset.channels != 1:
        raise DataError(
            f"{dataset.domain} holds images {dataset.images.shape[1:]}, not one-channel volumes (1, D, H, W): "
            "views come from a 3-D set; group 2-D images into cases with a folder of cases instead"
        )
    vol = dataset.images[:, 0]  # (N, D, H, W)
    d, h, w = vol.shape[1:]
    if kind == "orthogonal":
        if not d == h == w:
            raise DataError(
                f"{dataset.domain}: orthogonal views need cubic volumes, got {d}x{h}x{w}: use slices:K"
            )
        images = np.stack([vol[:, d // 2], vol[:, :, h // 2], vol[:, :, :, w // 2]], axis=1)  # (N, 3, S, S)
        names: tuple[str, ...] = ("axial", "coronal", "sagittal")
    else:
        depths = np.linspace(d // 4, d - 1 - d // 4, k).round().astype(int)
        images = vol[:, depths]  # (N, K, H, W)
        names = tuple(f"slice{z}" for z in depths)
    return MultiViewSet(_with_images(dataset, np.ascontiguousarray(images)), names)


def _with_images(dataset: ImageDataset, images: np.ndarray) -> ImageDataset:
    return ImageDataset(
        images=images,
        labels=dataset.labels,
        class_names=dataset.class_names,
        domain=dataset.domain,
        splits=dataset.splits,
        patient_ids=dataset.patient_ids,
        files=dataset.files,
        skipped=dataset.skipped,
        synthetic=dataset.synthetic,
    )


def load_case_folder(root: str | Path, image_size: int) -> MultiViewSet:
    """Cases from a folder (``ROOT/CLASS/CASE/VIEW.ext`` or ``ROOT/manifest.csv``), every view grey,
    zero-padded to a square and resized to ``image_size``.

    Raises:
        DataError: no case, a case missing a view the others have, an unreadable image or a bad manifest.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"case folder {root} not found: give a folder of CLASS/CASE/VIEW images")
    rows = _manifest(root) if (root / "manifest.csv").is_file() else _scan(root)
    if not rows:
        raise DataError(f"{root} holds no case: lay it out as CLASS/CASE/VIEW.png or give a manifest.csv")
    cases: dict[tuple[str, str], dict[str, Path]] = {}
    for case, view, path, label in rows:
        cases.setdefault((label, case), {})[view] = path
    views = sorted(set().union(*(v.keys() for v in cases.values())))
    if len(views) < 2:
        raise DataError(f"{root}: every case has one view ({views[0]}): a multi-view case needs two or more")
    classes = tuple(sorted({label for label, _ in cases}))
    images, labels, files = [], [], []
    for (label, case), by_view in sorted(cases.items()):
        missing = [v for v in views if v not in by_view]
        if missing:
            raise DataError(
                f"case {case} ({label}) in {root} has no view {', '.join(missing)}: every case needs {views}"
            )
        planes = []
        for v in views:
            arr = read_image(by_view[v]).astype(np.float32)
            grey = arr[..., :3].mean(-1) if arr.ndim == 3 else arr
            top = max(float(grey.max()), 1e-8)
            planes.append(to_square(grey / (255.0 if top <= 255 else top), image_size)[0])
        images.append(np.stack(planes))
        labels.append(classes.index(label))
        files.append(f"{label}/{case}")
    arr = (np.clip(np.stack(images), 0, 1) * 255).round().astype(np.uint8)  # (N, V, S, S)
    ds = ImageDataset(
        images=arr,
        labels=np.asarray(labels, dtype=np.int64),
        class_names=classes,
        domain=root.name,
        files=np.asarray(files),
    )
    return MultiViewSet(ds, tuple(views))


def _scan(root: Path) -> list[tuple[str, str, Path, str]]:
    rows = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for case_dir in sorted(p for p in class_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in sorted(case_dir.iterdir()):
                if f.suffix.lower() in _IMAGE_SUFFIXES:
                    rows.append((case_dir.name, f.stem, f, class_dir.name))
    return rows


def _manifest(root: Path) -> list[tuple[str, str, Path, str]]:
    path = root / "manifest.csv"
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"case", "view", "path", "label"}
        if not need <= set(reader.fieldnames or ()):
            raise DataError(f"{path} needs the columns case, view, path, label; it has {reader.fieldnames}")
        rows = []
        for i, r in enumerate(reader, start=2):
            p = (root / r["path"]).resolve()
            if not p.is_relative_to(root.resolve()):
                raise DataError(
                    f"{path} line {i}: {r['path']} lies outside {root}: keep images inside the folder"
                )
            if not p.is_file():
                raise DataError(f"{path} line {i}: {r['path']} not found")
            rows.append((r["case"], r["view"], p, r["label"]))
    return rows
