from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from medmeta.errors import CheckpointError, ConfigError
from medmeta.models.pretrained import Preprocessing, load_backbone
from tests._helpers.pretrained import HF_PP, as_batch

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install 'medmeta[pretrained]')"
)

# Measured: 0.0 against the torchvision backend (the same uint8 torch resize and floored crop) and 0.0 against
# the PIL backend (PIL resize); the bound allows float32 rounding of HF's fused rescale-and-normalise only.
PARITY_ATOL = 1e-5


def test_hf_folder_gives_dinov2s_pooler_output(hf_folder: tuple[Path, Any]) -> None:
    folder, saved = hf_folder
    backbone = load_backbone("hf:tiny/dinov2", weights=folder)
    x = torch.randn(2, 3, HF_PP["crop"], HF_PP["crop"])
    with torch.no_grad():
        out = saved(pixel_values=x)
        expected = out.last_hidden_state[:, 0]  # DINOv2's last_hidden_state is after its final layer norm
        torch.testing.assert_close(out.pooler_output, expected)
        torch.testing.assert_close(backbone(x), expected)
    assert backbone.out_features == expected.shape[1] == 32


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
@pytest.mark.parametrize("kind", ["grey", "rgb"])
def test_hf_preprocessing_matches_the_image_processor(
    hf_folder: tuple[Path, Any], kind: str, backend: str, grey_image: Image.Image, rgb_image: Image.Image
) -> None:
    folder, _ = hf_folder
    image = grey_image if kind == "grey" else rgb_image
    processor = transformers.AutoImageProcessor.from_pretrained(
        str(folder), local_files_only=True, backend=backend
    )
    prep = Preprocessing.from_hf(processor)
    assert (prep.mean, prep.std) == (tuple(HF_PP["mean"]), tuple(HF_PP["std"]))
    assert (prep.size, prep.resize, prep.interpolation) == (HF_PP["crop"], HF_PP["size"], "bicubic")
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(prep(as_batch(image))[0], expected, atol=PARITY_ATOL, rtol=0)


def test_hf_loader_uses_the_processor_transformers_picks(hf_folder: tuple[Path, Any]) -> None:
    folder, _ = hf_folder
    default = transformers.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    prep = load_backbone("hf:tiny/dinov2", weights=folder).preprocessing
    assert prep.resampler == ("torch" if default.backend == "torchvision" else "pil")
    assert prep.crop_offset == "floor"


def test_hf_cached_download_loads_offline(
    hf_folder: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub

    folder, saved = hf_folder
    cache = tmp_path / "cache"
    snapshot = cache / "models--tiny--dinov2" / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snapshot)
    (cache / "models--tiny--dinov2" / "refs").mkdir()
    (cache / "models--tiny--dinov2" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    backbone = load_backbone("hf:tiny/dinov2")
    x = torch.randn(1, 3, HF_PP["crop"], HF_PP["crop"])
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), saved(pixel_values=x).pooler_output)
    assert backbone.source["repo"] == "tiny/dinov2"
    assert set(backbone.source["sha256"]) == {"model.safetensors", "config.json", "preprocessor_config.json"}


def test_hf_offline_download_names_what_to_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError) as err:
        load_backbone("hf:microsoft/rad-dino")
    assert str(err.value) == (
        "hf:microsoft/rad-dino: no network to download its weights: download https://huggingface.co/microsoft/rad-dino "
        "(config.json, preprocessor_config.json, model.safetensors) into a folder and pass --weights FOLDER"
    )


def test_hf_pickle_weights_are_refused(hf_folder: tuple[Path, Any]) -> None:
    folder, _ = hf_folder
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin is a pickle file") as err:
        load_backbone("hf:tiny/dinov2", weights=folder)
    assert "\n" not in str(err.value)


def test_hf_folder_without_preprocessor_config_is_refused(hf_folder: tuple[Path, Any]) -> None:
    folder, _ = hf_folder
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ConfigError, match=r"has no preprocessor_config\.json"):
        load_backbone("hf:tiny/dinov2", weights=folder)


def test_hf_weights_must_be_a_folder(hf_folder: tuple[Path, Any]) -> None:
    folder, _ = hf_folder
    with pytest.raises(ConfigError, match=r"is a file; pass the folder holding config\.json"):
        load_backbone("hf:tiny/dinov2", weights=folder / "model.safetensors")


def test_hf_random_weights_are_refused() -> None:
    with pytest.raises(ConfigError, match="pretrained=False is only supported for timm"):
        load_backbone("hf:facebook/dinov2-small", pretrained=False)
