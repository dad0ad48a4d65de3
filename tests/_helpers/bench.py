"""Tiny benchmark protocols and user-added folder domains for the bench tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from medmeta.bench.protocol import Protocol, parse_protocol
from medmeta.data.synthetic import make_synthetic


def synthetic_folders(
    root: Path, size: int = 16, groups: tuple[tuple[int, ...], ...] = ((0, 1, 2), (3, 4, 5))
) -> list[str]:
    """Image-folder domains of 30 images per class, one per group of synthetic classes (paths as strings)."""
    ds = make_synthetic(image_size=size, channels=3, n_per_class=30)
    paths = []
    for d, classes in enumerate(groups):
        folder = root / f"domain{d}"
        for c in classes:
            (folder / ds.class_names[c]).mkdir(parents=True)
            for j, i in enumerate(ds.indices_of_class(c)):
                Image.fromarray(ds.images[i].transpose(1, 2, 0)).save(folder / ds.class_names[c] / f"{j}.png")
        paths.append(str(folder))
    return paths


def tiny_raw(domains: list[str], **changes: Any) -> dict[str, Any]:
    """A benchmark that trains for seconds: 2 methods, 2 shots, 1 seed, 16 px."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "description": "test protocol",
        "data": {"domains": domains, "image_size": 16, "channels": 3},
        "methods": ["protonet", {"name": "simpleshot", "options": {"batch_size": 16}}],
        "episodes": {"n_way": None, "n_shot": 2, "n_query": 4},
        "train": {"epochs": 2, "episodes_per_epoch": 4, "val_episodes": 4, "threads": 1},
        "eval": {"shots": [1, 3], "n_query": 5, "episodes": 12, "seed": 7, "calibration_episodes": 8},
        "seeds": [0],
        "reference": {"epochs": 1, "steps_per_epoch": 4, "batch_size": 16},
        "raw_pixels": {"enabled": False},  # the raw-pixel baseline has its own tests
    }
    for key, value in changes.items():
        raw[key] = value
    return raw


def tiny_protocol(domains: list[str], **changes: Any) -> Protocol:
    return parse_protocol(tiny_raw(domains, **changes), source="tiny test protocol")


def read_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
