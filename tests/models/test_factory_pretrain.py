"""`make_backbone` starting from a ``medmeta pretrain`` checkpoint: conv4, resnet12 and timm backbones hold its
``backbone.*`` weights; another kind, backbone or channel count is one CheckpointError line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medmeta.config import ModelConfig, make_config, make_pretrain_config
from medmeta.data.transforms import Normalization
from medmeta.errors import CheckpointError, ConfigError
from medmeta.models.factory import make_backbone
from medmeta.pipeline import build_method_from_config, load_method, train_method
from medmeta.pipeline.classification import read_pretrained_start
from medmeta.train.checkpoint import load_checkpoint
from tests._helpers.pretrained import write_timm_folder

pytest.importorskip("lightly", reason="lightly is not installed (pip install 'medmeta[ssl]')")
from medmeta.pipeline.pretrain import pretrain

GREY = Normalization(mean=(0.5,), std=(0.25,))


def pretrained(out: Path, backbone: str = "conv4", channels: int = 1, **model: object) -> Path:
    cfg = make_pretrain_config(
        {
            "data": {"domains": ["synthetic"], "image_size": 16, "channels": channels, "max_images": 16},
            "model": {"backbone": backbone, **model},
            "ssl": {"batch_size": 8, "steps_per_epoch": 1, "hidden_dim": 8, "output_dim": 4},
            "train": {"epochs": 1, "device": "cpu", "lr": 0.01},
        }
    )
    pretrain(cfg, out_dir=out)
    return out / "best.json"


def backbone_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    state, _ = load_checkpoint(checkpoint)
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


def build(model: ModelConfig, channels: int = 1) -> torch.nn.Module:
    return make_backbone(
        model,
        in_channels=channels,
        spatial_dims=2,
        image_size=16,
        normalization=GREY if channels == 1 else Normalization((0.5,) * 3, (0.25,) * 3),
        start=read_pretrained_start(model.weights),
    )


@pytest.mark.parametrize("name", ["conv4", "resnet12"])
def test_own_backbones_start_from_the_pretrained_weights(name: str, tmp_path: Path) -> None:
    checkpoint = pretrained(tmp_path, name)
    net = build(ModelConfig(backbone=name, weights=str(checkpoint)))
    saved = backbone_state(checkpoint)
    assert net.state_dict().keys() == saved.keys()
    for k, v in net.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_a_timm_backbone_starts_from_its_pretrained_weights_and_preprocessing(tmp_path: Path) -> None:
    pytest.importorskip("timm", reason="timm is not installed (pip install 'medmeta[pretrained]')")
    folder = write_timm_folder(tmp_path / "w", size=16)
    checkpoint = pretrained(tmp_path / "ssl", "timm:test_resnet", weights=str(folder))
    net = build(ModelConfig(backbone="timm:test_resnet", weights=str(checkpoint)))
    for k, v in net.state_dict().items():
        assert torch.equal(v, backbone_state(checkpoint)[k]), k
    assert net.record()["preprocessing"]["mean"] == [0.1, 0.2, 0.3]  # type: ignore[operator]
    assert net.record()["source"]["pretrain_checkpoint"] == str(checkpoint)  # type: ignore[operator]


def test_a_training_checkpoint_is_not_a_pretrain_checkpoint(tiny_checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match="is a training checkpoint, not a `medmeta pretrain` one"):
        build(ModelConfig(weights=str(tiny_checkpoint)), channels=3)


def test_another_backbone_or_channel_count_is_refused_in_one_line(tmp_path: Path) -> None:
    checkpoint = pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="holds a pretrained conv4, but this run builds resnet12"):
        build(ModelConfig(backbone="resnet12", weights=str(checkpoint)))
    with pytest.raises(CheckpointError, match="pretrained on 1-channel images, this run's have 3"):
        build(ModelConfig(weights=str(checkpoint)), channels=3)


def test_library_weights_for_an_own_backbone_are_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="conv4 starts from scratch or from a `medmeta pretrain` checkpoint"
    ):
        build(ModelConfig(weights=str(tmp_path / "model.safetensors")))


def test_a_method_trained_from_a_pretrain_checkpoint_starts_from_it_and_reloads_without_it(
    tmp_path: Path,
) -> None:
    checkpoint = pretrained(tmp_path / "ssl", channels=3)
    cfg = make_config(
        {
            "data": {"train": ["synthetic"], "image_size": 16},
            "episodes": {"n_way": 3, "n_shot": 1, "n_query": 2},
            "model": {"backbone": "conv4", "weights": str(checkpoint)},
            "train": {"epochs": 1, "episodes_per_epoch": 2, "val_episodes": 2, "device": "cpu"},
        }
    )
    initial = build_method_from_config(
        cfg, channels=3, spatial_dims=2, start=read_pretrained_start(str(checkpoint))
    )
    for k, v in backbone_state(checkpoint).items():
        assert torch.equal(initial.backbone.state_dict()[k], v), k
    method, _, _ = train_method(cfg, out_dir=tmp_path / "run")
    meta = load_checkpoint(tmp_path / "run" / "best.json")[1]
    assert meta["backbone_start"]["checkpoint"] == str(checkpoint)
    for p in (tmp_path / "ssl").iterdir():
        p.unlink()  # a trained run reloads without the checkpoint it started from
    loaded, _, _ = load_method(tmp_path / "run" / "best.json")
    for k, v in method.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
