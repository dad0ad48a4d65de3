"""Images shaped like real scans, and tiny checkpoints written by each library in its own on-disk format
(the values they are saved with are in `_tiny`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests._helpers.pretrained import HF_PP, OPEN_CLIP_CFG, OPEN_CLIP_PP, TIMM_PP, scan


@pytest.fixture
def grey_image() -> Image.Image:
    """A 97 x 131 (H x W) 8-bit grey PIL image: odd sizes catch rounding in resize and crop."""
    return Image.fromarray(scan(97, 131, seed=0), mode="L")


@pytest.fixture
def rgb_image() -> Image.Image:
    """A 131 x 97 (H x W) RGB PIL image, portrait, with different content per channel."""
    bands = [scan(131, 97, seed=s) for s in (1, 2, 3)]
    return Image.fromarray(np.stack(bands, axis=-1), mode="RGB")


@pytest.fixture
def timm_folder(tmp_path: Path) -> tuple[Path, Any]:
    """timm's hub layout (config.json + model.safetensors) of a tiny ViT, written by timm's save_for_hf."""
    timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'medmeta[pretrained]')")
    from timm.models._hub import save_for_hf

    model = timm.create_model("test_vit", pretrained=False, num_classes=5, pretrained_cfg_overlay=TIMM_PP)
    folder = tmp_path / "test_vit"
    save_for_hf(model, str(folder), safe_serialization=True)
    return folder, model.eval()


@pytest.fixture
def open_clip_folder(tmp_path: Path) -> tuple[Path, Any]:
    """open_clip's hub layout (open_clip_config.json + open_clip_model.safetensors) of a tiny CLIP, written as
    open_clip's save_for_hf does (its config writer, safetensors of the whole model's state dict)."""
    open_clip = pytest.importorskip(
        "open_clip", reason="open_clip is not installed (pip install 'medmeta[pretrained]')"
    )
    import safetensors.torch
    from open_clip.push_to_hf_hub import save_config_for_hf

    model = open_clip.CLIP(**OPEN_CLIP_CFG)
    open_clip.set_model_preprocess_cfg(model, {"size": 32, **OPEN_CLIP_PP})
    folder = tmp_path / "tiny_clip"
    folder.mkdir()
    safetensors.torch.save_file(model.state_dict(), folder / "open_clip_model.safetensors")
    save_config_for_hf(model, folder / "open_clip_config.json", model_config=OPEN_CLIP_CFG)
    return folder, model.eval()


@pytest.fixture
def hf_folder(tmp_path: Path) -> tuple[Path, Any]:
    """transformers' layout of a tiny DINOv2 (save_pretrained) with a BitImageProcessor (save_pretrained)."""
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed (pip install 'medmeta[pretrained]')"
    )
    config = transformers.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=28,
        patch_size=7,
    )
    model = transformers.Dinov2Model(config).eval()
    folder = tmp_path / "tiny_dinov2"
    model.save_pretrained(folder)
    transformers.BitImageProcessor(
        size={"shortest_edge": HF_PP["size"]},
        crop_size={"height": HF_PP["crop"], "width": HF_PP["crop"]},
        image_mean=HF_PP["mean"],
        image_std=HF_PP["std"],
        resample=3,
    ).save_pretrained(folder)
    return folder, model
