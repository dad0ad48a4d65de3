"""Few-shot segmentation runs (``medmeta seg``): `SegConfig` and its sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from medmeta.config._base import _Frozen, _validated, apply_overrides, read_yaml_mapping
from medmeta.config.run import TrainConfig


class SegDataConfig(_Frozen):
    """Which structures to train and test on (specs ``SOURCE`` or ``SOURCE:NAME,NAME``; see `medmeta.data.segmentation.sources`).

    Attributes:
        train: training structures; ``ct`` means every CT structure not listed in `test`.
        test: held-out structures, each evaluated separately.
        image_size: side of the square images.
        min_pixels: a slice or tile is a sample of a structure when the structure covers at least this many
            native pixels of it.
        tiles: native tile side per 2D source (DRIVE, EM).
        exclude_test_from_ssl: superpixels overlapping a test structure (> 10% of their area) are never used
            as pseudo-labels (the test organs stay unseen, as in SSL-ALPNet's setting 2).
        data_dir: data root (default ``$MEDMETA_DATA``).
    """

    train: list[str] = Field(default_factory=lambda: ["ct"], min_length=1)
    test: list[str] = Field(default_factory=lambda: ["ct:liver,spleen,kidney_left,kidney_right"])
    image_size: int = Field(64, ge=16, le=512)
    min_pixels: int = Field(20, ge=1)
    tiles: dict[str, int] = Field(default_factory=dict)
    exclude_test_from_ssl: bool = True
    data_dir: str | None = None


class SegEpisodeConfig(_Frozen):
    """Training episodes: 1-way ``n_shot``-shot with ``n_query`` query images."""

    n_shot: int = Field(1, ge=1)
    n_query: int = Field(2, ge=1)


class SegMethodConfig(_Frozen):
    """The segmenter (a key of `medmeta.methods.segmentation.SEG_METHODS`) and its options."""

    name: str = "alpnet"
    options: dict[str, Any] = Field(default_factory=dict)


class SegEvalConfig(_Frozen):
    """Evaluation: ``episodes`` seeded episodes per test structure and shot count."""

    episodes: int = Field(100, ge=1)
    shots: list[int] = Field(default_factory=lambda: [1, 5], min_length=1)
    n_query: int = Field(2, ge=1)
    seed: int = Field(12345, ge=0)


class SegConfig(_Frozen):
    """Everything a segmentation training-and-evaluation run needs; stored in every checkpoint."""

    data: SegDataConfig = SegDataConfig()
    episodes: SegEpisodeConfig = SegEpisodeConfig()
    method: SegMethodConfig = SegMethodConfig()
    train: TrainConfig = TrainConfig(epochs=5, episodes_per_epoch=100, val_episodes=20, device="cpu")
    eval: SegEvalConfig = SegEvalConfig()


def make_seg_config(data: dict[str, Any], source: str = "config") -> SegConfig:
    """Validate a plain dict into a `SegConfig`; errors name the field."""
    return _validated(SegConfig, data, source)


def load_seg_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SegConfig:
    """Read a YAML segmentation config and apply dotted-key overrides (``{"train.epochs": 2}``)."""
    p = Path(path)
    raw = read_yaml_mapping(p, f"config file {p} not found: check the path")
    return make_seg_config(apply_overrides(raw, overrides or {}), source=str(p))
