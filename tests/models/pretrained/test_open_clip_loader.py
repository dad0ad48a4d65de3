from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from medmeta.errors import CheckpointError, ConfigError
from medmeta.models.pretrained import load_backbone
from tests._helpers.pretrained import OPEN_CLIP_PP, as_batch

open_clip = pytest.importorskip(
    "open_clip", reason="open_clip is not installed (pip install 'medmeta[pretrained]')"
)

# Measured: 0.0 (PIL resize and torchvision's crop offsets, as open_clip's transform); float32 rounding only.
PARITY_ATOL = 1e-5


def test_open_clip_folder_gives_the_saved_models_image_embedding(open_clip_folder: tuple[Path, Any]) -> None:
    folder, saved = open_clip_folder
    backbone = load_backbone("open_clip:tiny-clip", weights=folder)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = saved.encode_image(x)  # open_clip's own embedding: not normalised for CLIP
        torch.testing.assert_close(backbone(x), expected)
    assert backbone.out_features == expected.shape[1] == 16


def test_open_clip_backbone_holds_only_the_image_tower(open_clip_folder: tuple[Path, Any]) -> None:
    folder, saved = open_clip_folder
    backbone = load_backbone("open_clip:tiny-clip", weights=folder)
    assert sum(p.numel() for p in backbone.parameters()) == sum(p.numel() for p in saved.visual.parameters())


@pytest.mark.parametrize("kind", ["grey", "rgb"])
def test_open_clip_preprocessing_matches_open_clips_own_transform(
    open_clip_folder: tuple[Path, Any], kind: str, grey_image: Image.Image, rgb_image: Image.Image
) -> None:
    folder, _ = open_clip_folder
    image = grey_image if kind == "grey" else rgb_image
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    backbone = load_backbone("open_clip:tiny-clip", weights=folder)
    prep = backbone.preprocessing
    assert (prep.mean, prep.std, prep.size) == (OPEN_CLIP_PP["mean"], OPEN_CLIP_PP["std"], 32)
    expected = preprocess(image.convert("RGB"))  # (3, 32, 32)
    torch.testing.assert_close(prep(as_batch(image))[0], expected, atol=PARITY_ATOL, rtol=0)


def test_open_clip_weights_file_beside_its_config_loads(open_clip_folder: tuple[Path, Any]) -> None:
    folder, saved = open_clip_folder
    backbone = load_backbone("open_clip:tiny-clip", weights=folder / "open_clip_model.safetensors")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), saved.encode_image(x))
    assert backbone.preprocessing.mean == OPEN_CLIP_PP["mean"]


def test_open_clip_weights_without_their_config_are_refused(
    open_clip_folder: tuple[Path, Any], tmp_path: Path
) -> None:
    lone = tmp_path / "lone" / "open_clip_model.safetensors"
    lone.parent.mkdir()
    shutil.copy(open_clip_folder[0] / "open_clip_model.safetensors", lone)
    with pytest.raises(ConfigError, match=r"comes without open_clip_config\.json beside it") as err:
        load_backbone("open_clip:tiny-clip", weights=lone)
    assert "\n" not in str(err.value)


def test_open_clip_config_without_preprocess_cfg_is_refused(open_clip_folder: tuple[Path, Any]) -> None:
    folder, _ = open_clip_folder
    config = json.loads((folder / "open_clip_config.json").read_text())
    del config["preprocess_cfg"]
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="no preprocess_cfg mean and std"):
        load_backbone("open_clip:tiny-clip", weights=folder)


def test_open_clip_folder_without_config_is_refused(open_clip_folder: tuple[Path, Any]) -> None:
    folder, _ = open_clip_folder
    (folder / "open_clip_config.json").unlink()
    with pytest.raises(ConfigError, match=r"has no open_clip_config\.json"):
        load_backbone("open_clip:tiny-clip", weights=folder)


def test_open_clip_pickle_weights_are_refused(open_clip_folder: tuple[Path, Any]) -> None:
    folder, _ = open_clip_folder
    (folder / "open_clip_model.safetensors").rename(folder / "open_clip_pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"open_clip_pytorch_model\.bin is a pickle file") as err:
        load_backbone("open_clip:tiny-clip", weights=folder)
    assert "\n" not in str(err.value)


def test_open_clip_weights_of_another_model_are_refused(open_clip_folder: tuple[Path, Any]) -> None:
    folder, _ = open_clip_folder
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"]["width"] = 48
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not fit its model_cfg"):
        load_backbone("open_clip:tiny-clip", weights=folder)


def test_open_clip_builtin_weights_file_takes_preprocessing_from_its_tag(tmp_path: Path) -> None:
    import safetensors.torch

    cfg = open_clip.get_model_config("RN50")
    # the image tower is all a backbone reads (and the smallest built-in one: 38 M parameters)
    visual = open_clip.model._build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"])
    weights = tmp_path / "rn50.safetensors"
    safetensors.torch.save_file(
        {f"visual.{k}": v.contiguous() for k, v in visual.state_dict().items()}, weights
    )
    backbone = load_backbone("open_clip:RN50.openai", weights=weights)
    tag = open_clip.get_pretrained_cfg("RN50", "openai")
    prep = backbone.preprocessing
    assert (prep.mean, prep.std, prep.size) == (tuple(tag["mean"]), tuple(tag["std"]), 224)
    assert (prep.interpolation, prep.resize_mode) == (tag["interpolation"], tag["resize_mode"])
    assert backbone.out_features == cfg["embed_dim"] == 1024


def test_open_clip_builtin_name_without_tag_lists_the_tags() -> None:
    with pytest.raises(ConfigError, match=r"open_clip:ViT-B-32.TAG \(tags: .*laion2b_s34b_b79k"):
        load_backbone("open_clip:ViT-B-32")


def test_open_clip_offline_download_names_what_to_download(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    name = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    with pytest.raises(ConfigError) as err:
        load_backbone(f"open_clip:{name}")
    assert str(err.value) == (
        f"open_clip:{name}: no network to download its weights: download "
        "https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 "
        "(open_clip_config.json, open_clip_model.safetensors) into a folder and pass --weights FOLDER"
    )


def test_open_clip_random_weights_are_refused() -> None:
    with pytest.raises(ConfigError, match="pretrained=False is only supported for timm"):
        load_backbone("open_clip:ViT-B-32", pretrained=False)
