"""Bounding-box annotations: Pascal VOC XML, COCO JSON and a simple CSV, read into one record type.

Every reader returns `BoxAnnotation` records (one per image: its file, size, ``(n, 4)`` boxes in pixel
``xmin, ymin, xmax, ymax`` and one class name per box). `read_boxes` picks the reader from the path:

- a Pascal VOC folder (``Annotations/*.xml`` and ``JPEGImages/``, optionally ``ImageSets/Main/SPLIT.txt``),
- a COCO ``*.json`` file (images are looked up beside it, or in ``images_dir``),
- a ``*.csv`` with the header ``image,xmin,ymin,xmax,ymax,label`` (one row per box; an image with no
  box is one row with empty coordinates and label).

`load_box_images` reads the images, letterboxes them to a square side (longer side resized, bottom and
right padded) and scales the boxes alike, so a set stacks into one ``(N, 3, S, S)`` tensor.

Example:
    >>> anns = read_boxes("bccd", split="test")  # doctest: +SKIP
    >>> images, boxes, labels, scales = load_box_images(anns, 320, classes=["RBC", "WBC"])  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medmeta.data.readers import DEFAULT_MAX_PIXELS, read_image
from medmeta.errors import DataError

CSV_HEADER = ("image", "xmin", "ymin", "xmax", "ymax", "label")


@dataclass(frozen=True)
class BoxAnnotation:
    """The boxes of one image.

    Attributes:
        image: path of the image file.
        width, height: image size in pixels (as annotated; 0 when the source does not say).
        boxes: ``(n, 4)`` float32 ``xmin, ymin, xmax, ymax`` in pixels, ``xmax > xmin`` and ``ymax > ymin``.
        labels: ``n`` class names, one per box.
    """

    image: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.boxes.shape != (len(self.labels), 4):
            raise DataError(
                f"{self.image}: {len(self.labels)} labels but boxes of shape {self.boxes.shape}: "
                "give one xmin, ymin, xmax, ymax per label"
            )


class _Dropped:
    """Counts the bad boxes skipped under ``drop_bad=True`` and warns once per source."""

    def __init__(self, drop: bool) -> None:
        self.drop, self.count, self.first = drop, 0, ""

    def warn(self, source: Path) -> None:
        if self.count:
            warnings.warn(
                f"{source}: dropped {self.count} degenerate or non-finite box(es), first at {self.first}",
                stacklevel=3,
            )


def _check_box(values: Sequence[float], where: str, dropped: _Dropped | None = None) -> list[float] | None:
    x0, y0, x1, y1 = (float(v) for v in values)
    bad = ""
    if not all(np.isfinite([x0, y0, x1, y1])):
        bad = f"box {list(values)} is not finite"
    elif x1 <= x0 or y1 <= y0:
        bad = f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has xmax <= xmin or ymax <= ymin"
    if not bad:
        return [x0, y0, x1, y1]
    if dropped is not None and dropped.drop:
        dropped.count += 1
        dropped.first = dropped.first or where
        return None
    raise DataError(f"{where}: {bad}: fix or remove it, or skip such boxes (drop_bad=True, --drop-bad-boxes)")


def _make(image: Path, width: int, height: int, boxes: list[list[float]], labels: list[str]) -> BoxAnnotation:
    arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)  # (n, 4)
    return BoxAnnotation(image, width, height, arr, tuple(labels))


def _text(node: ET.Element, tag: str, where: str) -> str:
    found = node.find(tag)
    if found is None or found.text is None:
        raise DataError(f"{where}: missing <{tag}>: every <object> needs <name> and <bndbox> with 4 corners")
    return found.text.strip()


def read_voc_xml(xml_path: str | Path, images_dir: str | Path, drop_bad: bool = False) -> BoxAnnotation:
    """One Pascal VOC annotation file; the image is ``images_dir / <filename>``.

    A box with ``xmax <= xmin`` or ``ymax <= ymin`` is refused, or skipped with a warning when `drop_bad`
    (BCCD has a few). VOC corners are 1-based and inclusive; they are kept as is.

    Raises:
        DataError: the XML is unreadable or an object lacks its name or a corner.
    """
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"{xml_path}: not a readable Pascal VOC XML file ({exc}): fix or remove it") from exc
    name = root.findtext("filename") or f"{xml_path.stem}.jpg"
    size = root.find("size")
    width = int(float(size.findtext("width") or 0)) if size is not None else 0
    height = int(float(size.findtext("height") or 0)) if size is not None else 0
    boxes, labels, dropped = [], [], _Dropped(drop_bad)
    for i, obj in enumerate(root.iter("object")):
        where = f"{xml_path} object {i}"
        label = _text(obj, "name", where)
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError(f"{where}: missing <bndbox>: give xmin, ymin, xmax, ymax")
        corners = [_text(bnd, tag, where) for tag in ("xmin", "ymin", "xmax", "ymax")]
        try:
            box = _check_box([float(c) for c in corners], where, dropped)
        except ValueError as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{where}: box corners {corners} are not numbers: fix them") from exc
        if box is not None:
            boxes.append(box)
            labels.append(label)
    dropped.warn(xml_path)
    return _make(Path(images_dir) / name.strip(), width, height, boxes, labels)


def read_voc_folder(
    root: str | Path, split: str | None = None, drop_bad: bool = False
) -> list[BoxAnnotation]:
    """A Pascal VOC folder: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/SPLIT.txt``.

    Args:
        root: the folder.
        split: a file of ``ImageSets/Main`` (``train``, ``val``, ``trainval``, ``test``), or None for every XML.
        drop_bad: skip degenerate boxes (with a warning) instead of refusing them.

    Raises:
        DataError: the layout or the split file is missing, or an XML is bad.
    """
    root = Path(root)
    ann_dir, img_dir = root / "Annotations", root / "JPEGImages"
    if not ann_dir.is_dir() or not img_dir.is_dir():
        raise DataError(f"{root}: not a Pascal VOC folder: it needs Annotations/ (XML) and JPEGImages/")
    if split is None:
        xmls = sorted(ann_dir.glob("*.xml"))
    else:
        split_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            have = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt"))
            raise DataError(f"{split_file} not found: choose a split among {have or 'none (omit split)'}")
        ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        xmls = [ann_dir / f"{i}.xml" for i in ids]
        missing = [str(p) for p in xmls if not p.is_file()]
        if missing:
            raise DataError(f"{split_file} names {len(missing)} image(s) with no XML, e.g. {missing[0]}")
    if not xmls:
        raise DataError(f"{ann_dir}: no *.xml annotation file")
    return [read_voc_xml(p, img_dir, drop_bad) for p in xmls]


def read_coco_json(
    json_path: str | Path, images_dir: str | Path | None = None, drop_bad: bool = False
) -> list[BoxAnnotation]:
    """A COCO detection file (``images``, ``annotations`` with ``bbox = [x, y, w, h]``, ``categories``).

    Args:
        json_path: the JSON file.
        images_dir: folder of the images (default: the JSON file's folder).
        drop_bad: skip degenerate boxes (with a warning) instead of refusing them.

    Raises:
        DataError: the JSON is unreadable, lacks a key, or a box/category id is bad.
    """
    json_path = Path(json_path)
    folder = Path(images_dir) if images_dir is not None else json_path.parent
    try:
        data = json.loads(json_path.read_text())
        images = {int(im["id"]): im for im in data["images"]}
        cats = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        anns = data["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{json_path}: not a COCO detection file ({type(exc).__name__}: {exc}): it needs images, "
            "annotations (image_id, bbox, category_id) and categories"
        ) from exc
    per_image: dict[int, tuple[list[list[float]], list[str]]] = {i: ([], []) for i in images}
    dropped = _Dropped(drop_bad)
    for k, ann in enumerate(anns):
        where = f"{json_path} annotation {ann.get('id', k)}"
        try:
            image_id, cat = int(ann["image_id"]), int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: needs image_id, category_id and bbox [x, y, w, h]") from exc
        if image_id not in per_image or cat not in cats:
            raise DataError(f"{where}: unknown image_id {image_id} or category_id {cat}: fix the ids")
        box = _check_box([x, y, x + w, y + h], where, dropped)
        if box is not None:
            per_image[image_id][0].append(box)
            per_image[image_id][1].append(cats[cat])
    dropped.warn(json_path)
    out = []
    for image_id, im in sorted(images.items()):
        boxes, labels = per_image[image_id]
        w, h = int(im.get("width", 0)), int(im.get("height", 0))
        out.append(_make(folder / str(im["file_name"]), w, h, boxes, labels))
    return out


def read_box_csv(
    csv_path: str | Path, images_dir: str | Path | None = None, drop_bad: bool = False
) -> list[BoxAnnotation]:
    """A CSV with the header ``image,xmin,ymin,xmax,ymax,label``, one row per box.

    A trailing ``score`` column (as `medmeta detect` writes) is allowed and ignored.

    Args:
        csv_path: the CSV file; ``image`` is relative to `images_dir` (default: the CSV's folder).
        images_dir: folder of the images.
        drop_bad: skip degenerate boxes (with a warning) instead of refusing them.

    Raises:
        DataError: the header differs or a row is bad (the message names the line).
    """
    csv_path = Path(csv_path)
    folder = Path(images_dir) if images_dir is not None else csv_path.parent
    per_image: dict[str, tuple[list[list[float]], list[str]]] = {}
    dropped = _Dropped(drop_bad)
    try:
        with csv_path.open(newline="") as f:
            reader = csv.reader(f)
            header = tuple(h.strip().lower() for h in next(reader, []))
            if header not in (CSV_HEADER, (*CSV_HEADER, "score")):
                raise DataError(
                    f"{csv_path}: header is {list(header)}; expected {','.join(CSV_HEADER)} (and optionally ,score)"
                )
            width = len(header)
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                where = f"{csv_path} line {line}"
                if len(row) != width:
                    raise DataError(f"{where}: {len(row)} fields; expected {width} ({','.join(header)})")
                image, *corners, label = (v.strip() for v in row[:6])
                boxes, labels = per_image.setdefault(image, ([], []))
                if not label and not any(corners):  # an image without any box
                    continue
                if not label:
                    raise DataError(f"{where}: empty label: give the class name of the box")
                try:
                    box = _check_box([float(c) for c in corners], where, dropped)
                except ValueError as exc:
                    if isinstance(exc, DataError):
                        raise
                    raise DataError(f"{where}: corners {corners} are not numbers: fix them") from exc
                if box is not None:
                    boxes.append(box)
                    labels.append(label)
    except OSError as exc:
        raise DataError(f"cannot read {csv_path}: {exc}") from exc
    dropped.warn(csv_path)
    return [_make(folder / name, 0, 0, b, lab) for name, (b, lab) in per_image.items()]


def read_boxes(
    path: str | Path,
    split: str | None = None,
    images_dir: str | Path | None = None,
    drop_bad: bool = False,
) -> list[BoxAnnotation]:
    """Read box annotations from a VOC folder, a COCO ``.json`` or a ``.csv`` (see the module docstring).

    Raises:
        DataError: the path is none of these, or its content is bad.
    """
    path = Path(path)
    if path.is_dir():
        return read_voc_folder(path, split, drop_bad)
    if split is not None:
        raise DataError(f"{path}: --split applies to Pascal VOC folders only; give the folder or drop it")
    if path.suffix.lower() == ".json":
        return read_coco_json(path, images_dir, drop_bad)
    if path.suffix.lower() == ".csv":
        return read_box_csv(path, images_dir, drop_bad)
    raise DataError(
        f"{path}: not a box annotation source: give a Pascal VOC folder, a COCO .json or a .csv "
        f"({','.join(CSV_HEADER)})"
    )


def class_names(annotations: Sequence[BoxAnnotation]) -> list[str]:
    """Sorted class names that occur in `annotations`."""
    return sorted({label for a in annotations for label in a.labels})


def letterbox(image: Tensor, size: int) -> tuple[Tensor, float]:
    """Resize ``(C, H, W)`` so its longer side is `size`, pad bottom/right to ``(C, size, size)``.

    Returns:
        The padded image (same dtype) and the scale factor applied to coordinates.
    """
    h, w = image.shape[-2:]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = F.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0]
    out = torch.zeros(image.shape[0], size, size)
    out[:, :nh, :nw] = resized  # (C, size, size)
    if image.dtype == torch.uint8:
        return out.round().clamp(0, 255).to(torch.uint8), scale
    return out, scale


def read_rgb(
    path: Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[Tensor, float, tuple[int, int]]:
    """Read an image as uint8 RGB, letterboxed to ``(3, size, size)``; also its scale and ``(H, W)``."""
    arr = read_image(path, max_pixels=max_pixels)
    if arr.dtype != np.uint8:
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / max(hi - lo, 1e-8) * 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    arr = arr[:, :, :3]
    chw = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)  # (3, H, W)
    out, scale = letterbox(chw, size)
    return out, scale, (int(arr.shape[0]), int(arr.shape[1]))


def load_box_images(
    annotations: Sequence[BoxAnnotation], size: int, classes: Sequence[str]
) -> tuple[Tensor, list[Tensor], list[Tensor], list[float]]:
    """Read and letterbox every image and scale its boxes; keep only boxes of `classes`.

    Args:
        annotations: the records.
        size: side of the square the images are letterboxed to.
        classes: class names; a box's label is its index here (boxes of other classes are dropped).

    Returns:
        ``(N, 3, size, size)`` uint8 images, N ``(n_i, 4)`` float boxes in letterboxed pixels, N ``(n_i,)``
        int64 labels, and the N scale factors (divide boxes by them to get original pixels).

    Raises:
        DataError: an image is missing or unreadable (the message names it).
    """
    if size < 32:
        raise DataError(f"image size {size} is too small for a detector: use at least 32 (e.g. 320)")
    index = {c: i for i, c in enumerate(classes)}
    images, boxes, labels, scales = [], [], [], []
    for ann in annotations:
        if not ann.image.is_file():
            raise DataError(f"image {ann.image} named by the annotations does not exist: fix the path")
        img, scale, _ = read_rgb(ann.image, size)
        keep = [i for i, label in enumerate(ann.labels) if label in index]
        images.append(img)
        boxes.append(torch.from_numpy(ann.boxes[keep]).reshape(-1, 4) * scale)  # (n_i, 4)
        labels.append(torch.tensor([index[ann.labels[i]] for i in keep], dtype=torch.int64))
        scales.append(scale)
    if not images:
        raise DataError("no annotated image to load: check the annotation source and split")
    return torch.stack(images), boxes, labels, scales
