"""The classification run: `RunConfig` and its sections (data, episodes, model, method, train, eval)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from medmeta.config._base import _Frozen, _validated, apply_overrides, read_yaml_mapping
from medmeta.errors import ConfigError


class DataConfig(_Frozen):
    """Which images to train, validate and test on.

    Domain specs are ``NAME[@SPLIT][:CLASS,CLASS,...]`` (see `medmeta.data.registry.DomainSpec`).

    Attributes:
        train: meta-training domains.
        val: validation domains; empty means a held-out fraction of the training images.
        test: test domains, each evaluated separately.
        image_size: side of the square images.
        channels: 1 (grey) or 3 (RGB; grey images are repeated).
        val_fraction: share of training images held out for validation when `val` is empty.
        data_dir: data root (default ``$MEDMETA_DATA``).
        skip_bad: skip unreadable image files instead of stopping.
        allow_class_overlap: allow a test class that is also a training class of the same dataset.
        dedupe: keep one image per near-duplicate group of every 2D dataset before splitting
            (`medmeta.data.near_duplicates`): its training copy when a group spans splits.
    """

    train: list[str] = Field(default_factory=lambda: ["synthetic"], min_length=1)
    val: list[str] = Field(default_factory=list)
    test: list[str] = Field(default_factory=list)
    image_size: int = Field(64, ge=8, le=512)
    channels: Literal[1, 3] = 3
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    data_dir: str | None = None
    skip_bad: bool = False
    allow_class_overlap: bool = False
    dedupe: bool = False


class EpisodeConfig(_Frozen):
    """Shape of episodes. ``n_way: null`` means every class of the domain."""

    n_way: int | None = Field(5, ge=2)
    n_shot: int = Field(5, ge=1)
    n_query: int = Field(15, ge=1)


#: backbone specs naming a library's network (`medmeta.models.pretrained`), beside medmeta's own backbones
LIBRARY_PREFIXES = ("timm:", "open_clip:", "hf:")


class ModelConfig(_Frozen):
    """The backbone.

    Attributes:
        backbone: medmeta's own ``conv4`` or ``resnet12`` (trained from scratch), or a library's network:
            ``timm:ARCH[.TAG]``, ``open_clip:NAME``, ``hf:ORG/REPO`` (`medmeta.models.pretrained`), whose
            preprocessing (size, crop, mean/std, channels) comes with its weights and is applied inside the
            backbone.
        weights: a ``medmeta pretrain`` checkpoint (``RUN/best.json``) to start ``conv4``, ``resnet12`` or a
            ``timm:`` backbone from; or, for a library backbone, a local weight file or folder in the
            library's layout, or a name recorded by ``medmeta weights import``; None downloads through the
            library's hub (when `pretrained`).
        pretrained: for a library backbone without `weights`: download its pretrained weights (True) or
            start from random weights (False).
        input_size: for a library backbone: the side of the square the network runs at, instead of the
            weights' own (the resize keeps the weights' crop ratio). Convolutional networks take any size; a
            ViT needs a size its position embedding supports.

    ``pixels`` / ``pixels:G`` is the raw-pixel baseline (`medmeta.models.pixels`): the image pooled to a
    ``G x G`` grid, nothing to train.
    """

    backbone: str = "conv4"
    weights: str | None = None
    pretrained: bool = True
    input_size: int | None = Field(None, ge=16, le=1024)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if value in ("conv4", "resnet12", "pixels") or (
            value.startswith(LIBRARY_PREFIXES) and value.split(":", 1)[1].strip()
        ):
            return value
        if value.startswith("pixels:"):
            grid = value.split(":", 1)[1]
            if grid.isdigit() and 1 <= int(grid) <= 64:
                return value
            raise ValueError(f"backbone '{value}': G in pixels:G must be an integer from 1 to 64")
        raise ValueError(
            f"unknown backbone '{value}': use conv4, resnet12, pixels[:G], timm:ARCH[.TAG], open_clip:NAME or "
            "hf:ORG/REPO"
        )

    @field_validator("input_size")
    @classmethod
    def _library_only(cls, value: int | None, info: Any) -> int | None:
        backbone = info.data.get("backbone", "")
        if value is not None and not str(backbone).startswith(LIBRARY_PREFIXES):
            raise ValueError(
                f"input_size applies to library backbones (timm:, open_clip:, hf:); {backbone} runs at the "
                "image size (set data.image_size instead)"
            )
        return value

    @property
    def raw_pixels(self) -> bool:
        """True for the parameter-free raw-pixel baseline (``pixels[:G]``)."""
        return self.backbone == "pixels" or self.backbone.startswith("pixels:")

    @property
    def from_library(self) -> bool:
        """True for a timm, open_clip or Hugging Face backbone."""
        return self.backbone.startswith(LIBRARY_PREFIXES)


class MethodConfig(_Frozen):
    """The method and its options (validated by the method's own ``Options`` model)."""

    name: str = "protonet"
    options: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(_Frozen):
    """Meta-training.

    Attributes:
        epochs: passes of `episodes_per_epoch` episodes.
        episodes_per_epoch: training episodes per epoch.
        meta_batch: episodes averaged per optimiser step.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        grad_clip: clip the gradient norm to this value (None: no clipping).
        lr_schedule: ``constant`` or ``cosine`` (annealed to 0 over all steps).
        val_episodes: validation episodes after each epoch (0: no validation, last epoch kept).
        seed: seeds weights and episodes.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        amp: mixed precision on CUDA.
        threads: torch intra-op threads (0: torch's default).
    """

    epochs: int = Field(10, ge=1)
    episodes_per_epoch: int = Field(100, ge=1)
    meta_batch: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float | None = Field(None, gt=0.0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    val_episodes: int = Field(100, ge=0)
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = False
    threads: int = Field(0, ge=0)


class EvalConfig(_Frozen):
    """Evaluation on the test domains (``n_way: null``: all classes of each test domain)."""

    episodes: int = Field(600, ge=1)
    n_way: int | None = Field(None, ge=2)
    n_shot: int = Field(5, ge=1)
    n_query: int = Field(15, ge=1)
    seed: int = Field(12345, ge=0)


class RunConfig(_Frozen):
    """Everything a training-and-evaluation run needs; stored in every checkpoint."""

    data: DataConfig = DataConfig()
    episodes: EpisodeConfig = EpisodeConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


def make_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a plain dict into a `RunConfig`.

    Raises:
        ConfigError: one line naming every bad field, its value and the rule.
    """
    return _validated(RunConfig, data, source)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML config and apply dotted `overrides` (for example ``{"train.epochs": 3}``)."""
    path = Path(path)
    raw = read_yaml_mapping(path, f"config file {path} not found: check the path")
    if "methods" in raw and "method" not in raw:
        raise ConfigError(
            f"{path} is a benchmark protocol (it lists methods), not a run config: run "
            f"`medmeta benchmark {path}`"
        )
    return make_config(apply_overrides(raw, overrides or {}), source=str(path))
