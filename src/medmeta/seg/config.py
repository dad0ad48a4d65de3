"""Configuration of a few-shot segmentation run: frozen pydantic models composed into `SegConfig`.

Only the CLI reads YAML; checkpoints store the config. A bad value raises a `ConfigError` naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from medmeta.config import TrainConfig, _Frozen, apply_overrides, describe_validation_error, read_yaml_mapping
from medmeta.errors import ConfigError


class SegDataConfig(_Frozen):
    """Which structures to train and test on (specs ``SOURCE`` or ``SOURCE:NAME,NAME``; see `seg.data`).

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
    """The segmenter (a key of `medmeta.seg.SEG_METHODS`) and its options."""

    name: str = "alpnet"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from medmeta.seg import SEG_METHODS

        if v not in SEG_METHODS:
            raise ValueError(
                f"unknown segmentation method '{v}'; choose one of {', '.join(sorted(SEG_METHODS))}"
            )
        return v


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

    @field_validator("method")
    @classmethod
    def _options(cls, v: SegMethodConfig) -> SegMethodConfig:
        from medmeta.seg import SEG_METHODS

        try:
            SEG_METHODS[v.name].Options(**v.options)
        except ValidationError as exc:
            raise ValueError(describe_validation_error(exc)) from None
        return v


def make_seg_config(data: dict[str, Any], source: str = "config") -> SegConfig:
    """Validate a plain dict into a `SegConfig`; errors name the field."""
    try:
        return SegConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {source}: {describe_validation_error(exc)}") from None


def load_seg_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SegConfig:
    """Read a YAML segmentation config and apply dotted-key overrides (``{"train.epochs": 2}``)."""
    p = Path(path)
    raw = read_yaml_mapping(p, f"config file {p} not found: check the path")
    return make_seg_config(apply_overrides(raw, overrides or {}), source=str(p))
