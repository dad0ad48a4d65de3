"""Detector checkpoints and detection outputs (CSV, COCO JSON, overlay PNGs).

A detector checkpoint is a folder: ``detector.json`` (method, options, classes, the weights' SHA-256) and
``detector.safetensors``. Nothing else is opened, and weights whose checksum differs are refused.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file
from torch import Tensor

from medmeta.errors import CheckpointError
from medmeta.methods.detection import DET_METHODS, FewShotDetector
from medmeta.outputs import write_text_atomic

META, WEIGHTS = "detector.json", "detector.safetensors"
COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_detector(
    detector: FewShotDetector, folder: Path, method: str, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``folder/detector.json`` and ``folder/detector.safetensors``; returns the JSON path."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in detector.model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    meta = {
        "kind": "detector",
        "method": method,
        "classes": list(detector.base_classes),
        "options": detector.options.model_dump(),
        "weights": WEIGHTS,
        "sha256": _sha256(folder / WEIGHTS),
        **(extra or {}),
    }
    return write_text_atomic(folder / META, json.dumps(meta, indent=2))


def is_detector_checkpoint(path: Path) -> bool:
    """True for a detector checkpoint folder (holding ``detector.json``) or that JSON file itself."""
    return path.name == META or (path.is_dir() and (path / META).is_file())


def load_detector(path: Path) -> tuple[FewShotDetector, dict[str, Any]]:
    """Load a checkpoint folder (or its ``detector.json``); the detector's base classes are all its classes.

    Raises:
        CheckpointError: missing files, an unknown method, or weights that fail their checksum.
    """
    folder = path.parent if path.name == META else path
    meta_path = folder / META
    if not meta_path.is_file():
        raise CheckpointError(
            f"{folder} is not a detector checkpoint (no {META}): give a `medmeta det train` output"
        )
    try:
        meta = json.loads(meta_path.read_text())
        method, classes = str(meta["method"]), [str(c) for c in meta["classes"]]
        options, digest = dict(meta["options"]), str(meta["sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{meta_path} is damaged ({type(exc).__name__}: {exc}): train the detector again"
        ) from exc
    if method not in DET_METHODS:
        raise CheckpointError(
            f"{meta_path}: unknown detection method '{method}'; known: {sorted(DET_METHODS)}"
        )
    weights = folder / WEIGHTS
    if not weights.is_file() or _sha256(weights) != digest:
        raise CheckpointError(f"{weights} is missing or does not match the checksum in {META}: train again")
    detector = DET_METHODS[method].from_options(classes, options)
    detector.model.load_state_dict(load_file(str(weights)))
    detector.model.eval()
    return detector, meta


def overlay(image: Tensor, det: dict[str, Tensor], classes: Sequence[str], min_score: float) -> bytes:
    """PNG bytes of ``(3, H, W)`` uint8 `image` with the boxes scoring at least `min_score` drawn on it."""
    pil = Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
    draw = ImageDraw.Draw(pil)
    for box, score, label in zip(
        det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist(), strict=True
    ):
        if score < min_score:
            continue
        colour = COLOURS[int(label) % len(COLOURS)]
        draw.rectangle(box, outline=colour, width=2)
        draw.text((box[0] + 2, box[1] + 1), f"{classes[int(label)]} {score:.2f}", fill=colour)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def detections_csv(names: Sequence[str], dets: Sequence[dict[str, Tensor]], classes: Sequence[str]) -> str:
    """CSV text ``image,xmin,ymin,xmax,ymax,label,score``, one row per box (original pixels, every score)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "xmin", "ymin", "xmax", "ymax", "label", "score"])
    for name, d in zip(names, dets, strict=True):
        for box, score, label in zip(
            d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist(), strict=True
        ):
            writer.writerow([name, *(round(v, 2) for v in box), classes[int(label)], round(score, 4)])
    return buf.getvalue()


def write_detections(
    out: Path,
    names: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    dets: Sequence[dict[str, Tensor]],
    classes: Sequence[str],
) -> tuple[Path, Path]:
    """Write ``boxes.csv`` (`detections_csv`) and ``boxes.coco.json`` in original pixels.

    Args:
        names: image file names; sizes: their ``(H, W)``; dets: boxes already in original pixels.
    """
    images: list[dict[str, object]] = []
    anns: list[dict[str, object]] = []
    for i, (name, (h, w), d) in enumerate(zip(names, sizes, dets, strict=True)):
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for box, score, label in zip(
            d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist(), strict=True
        ):
            x0, y0, x1, y1 = (round(v, 2) for v in box)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                    "area": round((x1 - x0) * (y1 - y0), 2),
                    "score": round(score, 4),
                    "iscrowd": 0,
                }
            )
    csv_path = write_text_atomic(out / "boxes.csv", detections_csv(names, dets, classes))
    coco = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": k + 1, "name": c} for k, c in enumerate(classes)],
    }
    json_path = write_text_atomic(out / "boxes.coco.json", json.dumps(coco, indent=1))
    return csv_path, json_path


def to_original(det: dict[str, Tensor], scale: float, size: tuple[int, int]) -> dict[str, Tensor]:
    """Boxes of a letterboxed image back to original pixels (divided by `scale`, clipped to ``(H, W)``)."""
    boxes = det["boxes"] / scale
    h, w = size
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, h)
    return {"boxes": boxes, "scores": det["scores"], "labels": det["labels"]}
