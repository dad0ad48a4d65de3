from __future__ import annotations

import functools
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from medmeta.errors import CheckpointError, ConfigError
from medmeta.models.pretrained import load_backbone
from medmeta.models.pretrained.sources import hub_reachable
from tests._helpers.pretrained import TIMM_PP, as_batch

timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'medmeta[pretrained]')")

# Measured: 0.0 (our PIL resampler and torchvision's crop offsets are the same arithmetic as timm's transform);
# the bound allows float32 rounding of the normalisation only.
PARITY_ATOL = 1e-5


def test_timm_folder_loads_the_saved_networks_pooled_features(timm_folder: tuple[Path, Any]) -> None:
    folder, saved = timm_folder
    backbone = load_backbone("timm:test_vit", weights=folder)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        expected = saved.forward_head(saved.forward_features(x), pre_logits=True)
        torch.testing.assert_close(backbone(x), expected)
    assert backbone.out_features == expected.shape[1] == 64
    assert not backbone.training


def test_timm_preprocessing_comes_from_the_folders_config(timm_folder: tuple[Path, Any]) -> None:
    backbone = load_backbone("timm:test_vit", weights=timm_folder[0])
    prep = backbone.preprocessing
    assert (prep.mean, prep.std, prep.interpolation) == (TIMM_PP["mean"], TIMM_PP["std"], "bilinear")
    assert (prep.size, prep.resize) == (160, 200)  # floor(160 / 0.8)


@pytest.mark.parametrize("kind", ["grey", "rgb"])
def test_timm_preprocessing_matches_timms_own_eval_transform(
    timm_folder: tuple[Path, Any], kind: str, grey_image: Image.Image, rgb_image: Image.Image
) -> None:
    folder, saved = timm_folder
    image = grey_image if kind == "grey" else rgb_image
    backbone = load_backbone("timm:test_vit", weights=folder)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=saved))
    expected = transform(image.convert("RGB"))  # (3, 160, 160)
    ours = backbone.preprocessing(as_batch(image))[0]
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=PARITY_ATOL, rtol=0)


def test_timm_safetensors_file_uses_the_registry_config_of_its_tag(
    timm_folder: tuple[Path, Any], tmp_path: Path
) -> None:
    folder, saved = timm_folder
    backbone = load_backbone("timm:test_vit.r160_in1k", weights=folder / "model.safetensors")
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(
            backbone(x), saved.forward_head(saved.forward_features(x), pre_logits=True)
        )
    registry = timm.models.get_pretrained_cfg("test_vit.r160_in1k")
    assert backbone.preprocessing.mean == tuple(registry.mean)
    assert backbone.source["sha256"].keys() == {"model.safetensors"}


def test_timm_random_weights_use_the_architectures_default_preprocessing() -> None:
    backbone = load_backbone("timm:test_resnet", pretrained=False)
    default = timm.data.resolve_model_data_config(timm.create_model("test_resnet"))
    assert backbone.preprocessing.size == default["input_size"][1]
    assert backbone.preprocessing.mean == tuple(default["mean"])
    assert backbone(torch.zeros(2, 3, 64, 64)).shape == (2, backbone.out_features)
    assert backbone.source["pretrained"] is False and backbone.source["sha256"] == {}


def test_timm_source_records_version_path_and_hashes(timm_folder: tuple[Path, Any]) -> None:
    folder, _ = timm_folder
    source = load_backbone("timm:test_vit", weights=folder).source
    assert source["library"] == "timm" and source["version"] == timm.__version__
    assert source["path"] == str(folder)
    assert set(source["sha256"]) == {"model.safetensors", "config.json"}
    json.dumps(source)


def test_timm_pickle_file_is_refused_with_the_conversion_command(tmp_path: Path) -> None:
    pickle_file = tmp_path / "pytorch_model.bin"
    pickle_file.write_bytes(b"not opened")
    with pytest.raises(CheckpointError, match=r"pickle file.*safetensors\.torch.*save_file") as err:
        load_backbone("timm:test_vit", weights=pickle_file)
    assert "\n" not in str(err.value)


def test_timm_folder_with_only_pickle_weights_is_refused(timm_folder: tuple[Path, Any]) -> None:
    folder, _ = timm_folder
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin is a pickle file"):
        load_backbone("timm:test_vit", weights=folder)


def test_timm_missing_weights_give_one_line(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"timm:test_vit: weights .*nowhere not found; pass a \.safetensors"
    ) as err:
        load_backbone("timm:test_vit", weights=tmp_path / "nowhere")
    assert "\n" not in str(err.value)


def test_timm_folder_of_another_architecture_is_refused(timm_folder: tuple[Path, Any]) -> None:
    with pytest.raises(CheckpointError, match="is for architecture 'test_vit', not 'test_resnet'"):
        load_backbone("timm:test_resnet", weights=timm_folder[0])


def test_timm_unknown_architecture_and_tag_are_named() -> None:
    with pytest.raises(ConfigError, match="timm has no architecture 'no_such_net'"):
        load_backbone("timm:no_such_net", pretrained=False)
    with pytest.raises(ConfigError, match="no pretrained tag 'nope' for test_vit"):
        load_backbone("timm:test_vit.nope")


def test_timm_offline_download_names_what_to_download(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError) as err:
        load_backbone("timm:resnet18.a1_in1k")
    assert str(err.value) == (
        "timm:resnet18.a1_in1k: no network to download its weights: download "
        "https://huggingface.co/timm/resnet18.a1_in1k (config.json, model.safetensors) into a folder "
        "and pass --weights FOLDER"
    )


@functools.cache
def _online() -> bool:
    """Whether huggingface.co resolves and accepts a connection (probed once, in at most a few seconds)."""
    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError:
        return False
    return hub_reachable(timeout=3.0)


@pytest.mark.skipif(_online(), reason="this machine reaches huggingface.co; the test needs no network")
def test_without_network_the_download_fails_within_seconds_with_the_same_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.monotonic()
    with pytest.raises(
        ConfigError, match=r"no network to download its weights: download https://huggingface\.co/"
    ):
        load_backbone("timm:resnet18.a1_in1k")
    assert time.monotonic() - start < 10  # the hub client alone retries for about 25 s


@pytest.mark.slow
@pytest.mark.skipif(
    not _online(), reason="no network to huggingface.co (this test downloads resnet18.a1_in1k)"
)
def test_timm_downloads_resnet18_from_the_hub() -> None:
    backbone = load_backbone("timm:resnet18.a1_in1k")
    assert backbone.out_features == 512
    assert backbone.preprocessing.resize == 235  # floor(224 / 0.95)
    assert backbone.source["repo"] == "timm/resnet18.a1_in1k"
    assert backbone(torch.zeros(1, 3, 224, 224)).shape == (1, 512)
