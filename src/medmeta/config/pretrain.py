"""Self-supervised pretraining (``medmeta pretrain``): `PretrainConfig` and its sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from medmeta.config._base import _Frozen, _validated, apply_overrides, read_yaml_mapping
from medmeta.config.run import ModelConfig, TrainConfig


class PretrainDataConfig(_Frozen):
    """The unlabelled images of a pretraining run: every named domain, pooled (labels are never read).

    Attributes:
        domains: domain specs ``NAME[@SPLIT][:CLASS,...]`` (see `DataConfig`). Naming a held-out domain's
            training split (``brain_tumor_mri@train``) adds its unlabelled training images (setting (b)).
        image_size: side of the square images.
        channels: 1 (grey) or 3 (RGB; grey images are repeated).
        max_images: use at most this many images, a seeded choice over the pool (None: all).
        data_dir: data root (default ``$MEDMETA_DATA``).
        skip_bad: skip unreadable image files instead of stopping.
    """

    domains: list[str] = Field(default_factory=lambda: ["synthetic"], min_length=1)
    image_size: int = Field(64, ge=8, le=512)
    channels: Literal[1, 3] = 3
    max_images: int | None = Field(None, ge=2)
    data_dir: str | None = None
    skip_bad: bool = False


class SSLConfig(_Frozen):
    """The self-supervised method and its heads (`medmeta.methods.self_supervised`).

    Attributes:
        method: ``simclr``, ``moco`` (v2), ``byol`` or ``dino``.
        batch_size: images per optimiser step (each seen as two views, DINO: 2 global + `local_crops`).
        steps_per_epoch: optimiser steps per epoch (None: one pass over the pooled images).
        hidden_dim: hidden width of the projection (and BYOL prediction) head.
        output_dim: projection output width (DINO: the number of prototypes).
        bottleneck_dim: DINO's head bottleneck width.
        temperature: NT-Xent temperature (SimCLR, MoCo); DINO's student temperature.
        teacher_temperature: DINO's teacher temperature (warmed up from 0.04 over `teacher_warmup_epochs`).
        teacher_warmup_epochs: DINO's teacher temperature warm-up, in epochs.
        memory_bank_size: MoCo's queue of negative keys.
        momentum: momentum of the key / target / teacher network at the first step (MoCo, BYOL, DINO),
            raised to `momentum_end` along a cosine schedule over all steps (lightly's ``cosine_schedule``).
        momentum_end: the momentum at the last step.
        local_crops: DINO's number of local views (small crops, `AugmentConfig.local_crop_scale`, resized to
            the image size like the global views, so every backbone takes them).
    """

    method: Literal["simclr", "moco", "byol", "dino"] = "simclr"
    batch_size: int = Field(64, ge=2)
    steps_per_epoch: int | None = Field(None, ge=1)
    hidden_dim: int = Field(512, ge=1)
    output_dim: int = Field(128, ge=1)
    bottleneck_dim: int = Field(64, ge=1)
    temperature: float = Field(0.1, gt=0.0, le=10.0)
    teacher_temperature: float = Field(0.04, gt=0.0, le=10.0)
    teacher_warmup_epochs: int = Field(0, ge=0)
    memory_bank_size: int = Field(4096, ge=1)
    momentum: float = Field(0.99, ge=0.0, le=1.0)
    momentum_end: float = Field(1.0, ge=0.0, le=1.0)
    local_crops: int = Field(2, ge=0, le=16)


class AugmentConfig(_Frozen):
    """Random views of medical images (`medmeta.data.augment.ViewAugment`); no hue or saturation jitter.

    Attributes:
        crop_scale: range of the area fraction of a random resized crop (global views).
        local_crop_scale: the same for DINO's local views.
        hflip: probability of a horizontal flip.
        vflip: probability of a vertical flip.
        rotation: largest rotation, degrees (uniform in ``[-rotation, rotation]``).
        brightness: largest brightness shift, a fraction of the intensity range.
        contrast: largest relative contrast change.
        blur: probability of a gaussian blur.
        blur_sigma: range of its standard deviation, in pixels of the view.
        noise: standard deviation of additive gaussian noise (intensities in ``[0, 1]``).
    """

    crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.1, 0.4)
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    vflip: float = Field(0.5, ge=0.0, le=1.0)
    rotation: float = Field(10.0, ge=0.0, le=180.0)
    brightness: float = Field(0.2, ge=0.0, le=1.0)
    contrast: float = Field(0.2, ge=0.0, le=1.0)
    blur: float = Field(0.3, ge=0.0, le=1.0)
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    noise: float = Field(0.02, ge=0.0, le=1.0)

    @field_validator("crop_scale", "local_crop_scale", "blur_sigma")
    @classmethod
    def _ordered_positive_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 < low <= high:
            raise ValueError(f"need 0 < low <= high, got ({low}, {high})")
        return value

    @field_validator("crop_scale", "local_crop_scale")
    @classmethod
    def _at_most_one(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[1] > 1.0:
            raise ValueError(f"an area fraction is at most 1, got {value[1]}")
        return value


class PretrainConfig(_Frozen):
    """A self-supervised pretraining run (``medmeta pretrain``); stored in its checkpoints.

    ``train`` is the shared `TrainConfig`: epochs, lr, weight_decay, grad_clip, lr_schedule, seed, device,
    amp and threads apply; its episodic fields (episodes_per_epoch, meta_batch, val_episodes) do not (the
    batch size and steps per epoch are ``ssl.batch_size`` and ``ssl.steps_per_epoch``; there is no
    validation, the last epoch is kept).
    """

    data: PretrainDataConfig = PretrainDataConfig()
    model: ModelConfig = ModelConfig()
    ssl: SSLConfig = SSLConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig(val_episodes=0)


def make_pretrain_config(data: dict[str, Any], source: str = "config") -> PretrainConfig:
    """Validate a plain dict into a `PretrainConfig`.

    Raises:
        ConfigError: one line naming every bad field, its value and the rule.
    """
    return _validated(PretrainConfig, data, source)


def load_pretrain_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """Read a YAML pretraining config and apply dotted `overrides` (``{"ssl.method": "byol"}``)."""
    p = Path(path)
    raw = read_yaml_mapping(p, f"config file {p} not found: check the path")
    return make_pretrain_config(apply_overrides(raw, overrides or {}), source=str(p))
