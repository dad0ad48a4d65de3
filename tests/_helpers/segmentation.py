"""Small segmenter options (a few thousand weights) and DRIVE laid out as a user's folder, for fast tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

SMALL: dict[str, dict[str, Any]] = {
    "panet": {"base": 4, "depth": 2, "feature_dim": 8},
    "alpnet": {"base": 4, "depth": 2, "feature_dim": 8, "local_window": 4},
    "ssl_alpnet": {"base": 4, "depth": 2, "feature_dim": 8, "local_window": 4},
    "maml": {"base": 4, "depth": 2, "inner_steps": 1, "eval_steps": 2},
    "finetune": {"base": 4, "depth": 2, "steps": 2},
}


def drive_pairs(data_dir: Path, n: int) -> list[tuple[Path, Path]]:
    """The first `n` DRIVE training (image, first observer's mask) pairs."""
    base = data_dir / "segmentation" / "drive" / "training"
    images = sorted((base / "images").glob("*_training.tif"))[:n]
    return [(p, base / "1st_manual" / f"{p.name.split('_')[0]}_manual1.gif") for p in images]


def drive_folder(data_dir: Path, root: Path, n: int = 4) -> Path:
    """DRIVE training pairs as images/NAME.png + masks/NAME.png (PNG masks of 0/255)."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for image, mask in drive_pairs(data_dir, n):
        stem = image.name.split("_")[0]
        with Image.open(image) as im:
            im.convert("RGB").save(root / "images" / f"case{stem}.png")
        with Image.open(mask) as m:
            m.convert("L").save(root / "masks" / f"case{stem}.png")
    return root
