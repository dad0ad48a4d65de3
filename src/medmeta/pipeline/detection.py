"""Few-shot detection runs: base training, the K-shot novel-class protocol, and detection on a folder.

Protocol: the detector is trained on the base classes of the pool split (``trainval``) with all their
boxes (boxes of the novel classes are dropped, so those objects are background); for K in ``shots`` and
each seeded draw, K pool images holding each novel class (every box kept) adapt each method; all classes
are scored on the held-out split (``test``) by COCO AP@0.5 and AP@[0.5:0.95], novel and base apart.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from medmeta.data.boxes import class_names, load_box_images, read_boxes
from medmeta.errors import DataError
from medmeta.eval.detection import class_ap, split_ap
from medmeta.methods.detection import DET_METHODS, DetPredictor, FewShotDetector
from medmeta.tasks.detection import KShotDetSampler
from medmeta.train.detection import DetFitResult, fit_detector


@dataclass(frozen=True)
class BoxSet:
    """Letterboxed images ``(N, 3, S, S)`` uint8 with boxes and labels (indices of ``classes``)."""

    images: Tensor
    boxes: list[Tensor]
    labels: list[Tensor]
    classes: tuple[str, ...]
    names: list[str]
    scales: list[float]


def load_box_set(
    source: Path, split: str | None, classes: Sequence[str] | None, image_size: int, drop_bad: bool = False
) -> BoxSet:
    """Read annotations (VOC folder, COCO JSON or CSV) and images; `classes` None keeps every class found."""
    anns = read_boxes(source, split=split, drop_bad=drop_bad)
    names = tuple(classes) if classes is not None else tuple(class_names(anns))
    images, boxes, labels, scales = load_box_images(anns, image_size, names)
    return BoxSet(images, boxes, labels, names, [a.image.name for a in anns], scales)


def split_classes(found: Sequence[str], novel: Sequence[str]) -> tuple[list[str], list[str]]:
    """Base and novel class names; raises `DataError` naming an unknown novel class."""
    unknown = [c for c in novel if c not in found]
    if unknown:
        raise DataError(f"novel class(es) {unknown} not in the annotations; classes found: {list(found)}")
    base = [c for c in found if c not in novel]
    if not base:
        raise DataError("every class is novel: leave at least one base class to train the detector on")
    return base, list(novel)


def check_base_request(
    source: Path, novel: Sequence[str], method: str, split: str | None, drop_bad: bool = False
) -> list[str]:
    """The base classes of a `train_base` request, read from the annotations alone (no image is loaded).

    Raises:
        DataError: an unknown method, unreadable annotations, an unknown novel class or no base class left.
    """
    if method not in DET_METHODS:
        raise DataError(f"unknown detection method '{method}'; choose from {sorted(DET_METHODS)}")
    found = class_names(read_boxes(source, split=split, drop_bad=drop_bad))
    return split_classes(found, novel)[0]


def train_base(
    source: Path,
    novel: Sequence[str],
    *,
    method: str = "tfa",
    options: dict[str, Any] | None = None,
    split: str | None = "trainval",
    image_size: int = 320,
    epochs: int = 6,
    batch_size: int = 4,
    lr: float = 1e-3,
    seed: int = 0,
    drop_bad: bool = False,
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[FewShotDetector, DetFitResult]:
    """Train a detector of `method` on the base classes of `source` (novel boxes dropped)."""
    base = check_base_request(source, novel, method, split, drop_bad)
    data = load_box_set(source, split, base, image_size, drop_bad)
    opts = {**(options or {}), "image_size": image_size}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        detector = DET_METHODS[method].from_options(base, opts)
    fit = fit_detector(
        detector,
        data.images,
        data.boxes,
        data.labels,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        on_step=on_step,
    )
    return detector, fit


def detect(predictor: DetPredictor, images: Tensor, chunk: int = 8) -> list[dict[str, Tensor]]:
    """Detections of ``(N, 3, H, W)`` images, `chunk` images at a time."""
    out: list[dict[str, Tensor]] = []
    for start in range(0, images.shape[0], chunk):
        out += predictor.detections(images[start : start + chunk])
    return out


def score(predictor: DetPredictor, data: BoxSet, novel: Sequence[int]) -> dict[str, float]:
    """Novel and base AP of `predictor` on `data` (its classes must be ``predictor.classes``)."""
    dets = detect(predictor, data.images)
    targets = [{"boxes": b, "labels": lab} for b, lab in zip(data.boxes, data.labels, strict=True)]
    return split_ap(class_ap(dets, targets, len(data.classes)), novel)


def kshot_protocol(
    detector: FewShotDetector,
    source: Path,
    novel: Sequence[str],
    *,
    methods: dict[str, dict[str, Any]],
    shots: Sequence[int] = (1, 3, 5, 10),
    draws: int = 3,
    seed: int = 0,
    pool_split: str | None = "trainval",
    test_split: str | None = "test",
    drop_bad: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Adapt each method to each seeded K-shot draw of the novel classes and score it on the test split.

    Args:
        detector: base-trained; its classes are the base classes.
        methods: label -> options (``{}`` for the defaults); the method is the label up to its first ``:``
            (`parse_method` turns ``tfa:rpn_steps=0`` into this pair).

    Returns:
        One row per (method, K, draw): ``novel_ap50``, ``novel_ap``, ``base_ap50``, ``base_ap``, ``seconds``;
        plus rows of method ``base_only`` (K = 0): the base detector before any novel class.
    """
    unknown = [m for m in methods if m.split(":")[0] not in DET_METHODS]
    if unknown:
        raise DataError(f"unknown detection method(s) {unknown}; choose from {sorted(DET_METHODS)}")
    size = detector.options.image_size
    classes = (*detector.base_classes, *novel)
    novel_idx = tuple(range(len(detector.base_classes), len(classes)))
    pool = load_box_set(source, pool_split, classes, size, drop_bad)
    test = load_box_set(source, test_split, classes, size, drop_bad)
    rows: list[dict[str, Any]] = []

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    base_scores = score(detector.base_predictor(), test, novel_idx)
    add({"method": "base_only", "shots": 0, "draw": 0, **base_scores, "seconds": 0.0})
    for k in shots:
        sampler = KShotDetSampler(
            (pool.images, pool.boxes, pool.labels),
            (test.images, test.boxes, test.labels),
            classes,
            novel_idx,
            k,
            seed,
            n_episodes=draws,
        )
        for draw in range(draws):
            episode = sampler.episode(draw)
            for name, opts in methods.items():
                cls = DET_METHODS[name.split(":")[0]]
                method = cls.from_options(detector.base_classes, {**opts, "image_size": size})
                method.model = detector.model
                start = time.perf_counter()
                predictor = method.adapt(episode.support)
                seconds = time.perf_counter() - start
                add(
                    {
                        "method": name,
                        "shots": k,
                        "draw": draw,
                        **score(predictor, test, novel_idx),
                        "seconds": seconds,
                    }
                )
    return rows


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME[:KEY=VALUE,...]`` -> (spec, options); values are read as JSON when they parse, else kept as text.

    Raises:
        DataError: an unknown method or an option without ``=``.
    """
    name, _, rest = spec.partition(":")
    if name not in DET_METHODS:
        raise DataError(f"unknown detection method '{name}' in '{spec}'; choose from {sorted(DET_METHODS)}")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise DataError(f"method option '{item}' in '{spec}' needs KEY=VALUE, e.g. tfa:rpn_steps=0")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return spec, options


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and 95% CI half-width (Student t over draws) of each metric per (method, K)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["shots"]), []).append(r)
    out = []
    for (method, k), rs in groups.items():
        row: dict[str, Any] = {"method": method, "shots": k, "draws": len(rs)}
        for key in ("novel_ap50", "novel_ap", "base_ap50", "base_ap", "seconds"):
            values = np.asarray([r[key] for r in rs], dtype=float)
            row[key] = float(values.mean())
            n = len(values)
            half = (
                float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))
                if n > 1
                else float("nan")
            )
            row[f"{key}_ci"] = half
        out.append(row)
    return out


def markdown_table(summary: Sequence[dict[str, Any]], novel: Sequence[str]) -> str:
    """The summary as a Markdown table of AP in percent (mean ± 95% CI over draws)."""

    def cell(row: dict[str, Any], key: str) -> str:
        ci = row[f"{key}_ci"]
        return f"{100 * row[key]:.1f}" + ("" if math.isnan(ci) else f" ± {100 * ci:.1f}")

    lines = [
        f"| method | K | draws | novel ({', '.join(novel)}) AP50 | novel AP | base AP50 | base AP | adapt s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        lines.append(
            f"| {r['method']} | {r['shots']} | {r['draws']} | {cell(r, 'novel_ap50')} | {cell(r, 'novel_ap')} | "
            f"{cell(r, 'base_ap50')} | {cell(r, 'base_ap')} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def adapt_once(
    detector: FewShotDetector,
    source: Path,
    novel: Sequence[str],
    *,
    method: str,
    shots: int,
    seed: int = 0,
    pool_split: str | None = "trainval",
    test_split: str | None = "test",
    drop_bad: bool = False,
) -> tuple[FewShotDetector, dict[str, float]]:
    """Adapt to draw 0 of K = `shots` (seed `seed`); return a detector whose classes include the novel ones,
    and its scores on the test split."""
    size = detector.options.image_size
    classes = (*detector.base_classes, *novel)
    novel_idx = tuple(range(len(detector.base_classes), len(classes)))
    pool = load_box_set(source, pool_split, classes, size, drop_bad)
    test = load_box_set(source, test_split, classes, size, drop_bad)
    sampler = KShotDetSampler(
        (pool.images, pool.boxes, pool.labels),
        (test.images, test.boxes, test.labels),
        classes,
        novel_idx,
        shots,
        seed,
    )
    options = detector.options.model_dump()
    adapter = DET_METHODS[method].from_options(detector.base_classes, options)
    adapter.model = detector.model
    predictor = adapter.adapt(sampler.episode(0).support)
    adapted = DET_METHODS[method].from_options(predictor.classes, options)
    adapted.model = predictor.model
    return adapted, score(predictor, test, novel_idx)
