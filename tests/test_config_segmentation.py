"""The shipped configs/seg_*.yaml validate as segmentation configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from medmeta.config import load_seg_config
from medmeta.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("seg_*.yaml"))


def test_there_are_segmentation_configs() -> None:
    assert {p.name for p in CONFIGS} >= {"seg_setting2.yaml", "seg_cross.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_segmentation_config_validates(path: Path) -> None:
    cfg = load_seg_config(path, {"train.epochs": 1})
    assert cfg.data.train and cfg.data.test and cfg.train.epochs == 1


def test_config_errors_name_the_file_or_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_seg_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {image_size: 4}\n")
    with pytest.raises(ConfigError, match=r"data\.image_size=4"):
        load_seg_config(bad)
    bad.write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_seg_config(bad)
