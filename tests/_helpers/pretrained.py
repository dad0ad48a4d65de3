"""What the tiny checkpoints of conftest.py are saved with, and helpers for scan-like test images.

Every checkpoint is saved with non-default preprocessing (mean, std, size, crop, interpolation), so a test that
reads it back proves it came from the saved config, not from a library default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

TIMM_PP = {"mean": (0.1, 0.2, 0.3), "std": (0.3, 0.2, 0.1), "crop_pct": 0.8, "interpolation": "bilinear"}
OPEN_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
OPEN_CLIP_PP = {
    "mean": (0.2, 0.3, 0.4),
    "std": (0.5, 0.4, 0.3),
    "interpolation": "bilinear",
    "resize_mode": "shortest",
}
# crop 29: the resized 97 x 131 image is 36 x 48, so both crop offsets fall on .5 and HF's floor != torchvision's round
HF_PP = {"size": 36, "crop": 29, "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.6, 0.7]}


def scan(height: int, width: int, seed: int) -> np.ndarray:
    """(H, W) uint8: a bright disc on a vertical gradient with noise, like a small X-ray crop."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = 40 + 120 * yy / height
    img += 90 * ((yy - 0.45 * height) ** 2 + (xx - 0.6 * width) ** 2 < (0.3 * height) ** 2)
    img += rng.normal(0, 12, size=(height, width))
    return np.clip(img, 0, 255).astype(np.uint8)


def as_batch(image: Image.Image) -> torch.Tensor:
    """PIL image -> ``(1, C, H, W)`` uint8 (C = 1 for a grey image)."""
    array = np.asarray(image)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None]


def write_timm_folder(folder: Path, arch: str = "test_resnet", size: int = 32) -> Path:
    """A tiny timm network in timm's hub layout (``config.json`` + ``model.safetensors``, written by timm's
    own ``save_for_hf``) whose preprocessing takes `size` px with `TIMM_PP`'s mean/std and no crop."""
    timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'medmeta[pretrained]')")
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    overlay = {**TIMM_PP, "input_size": (3, size, size), "crop_pct": 1.0}
    model = timm.create_model(arch, pretrained=False, num_classes=0, pretrained_cfg_overlay=overlay)
    save_for_hf(model, str(folder), safe_serialization=True)
    return folder
