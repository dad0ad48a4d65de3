"""Run configuration: frozen pydantic models, one per concern, composed into `RunConfig` (classification)
and `SegConfig` (segmentation); both share `TrainConfig`.

Only the CLI reads YAML or flags; everything else receives these objects. A bad value raises a
`ConfigError` naming the field, the value and the allowed range. Checkpoints store the config.
This module is a leaf (it imports nothing of medmeta but its errors): method names and their options are
checked against the registries by `medmeta.pipeline.checks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medmeta.errors import ConfigError

C = TypeVar("C", bound=BaseModel)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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


def describe_validation_error(exc: Exception) -> str:
    """One line from a pydantic error: ``field.path=value: reason`` for each problem."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f"={value!r}"
        parts.append(f"{loc}{shown}: {err['msg']}")
    return "; ".join(parts)


def _validated(model: type[C], data: dict[str, Any], source: str) -> C:
    """`model` validated from `data`, or one `ConfigError` line naming every bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {source}: {describe_validation_error(exc)}") from None


def make_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a plain dict into a `RunConfig`.

    Raises:
        ConfigError: one line naming every bad field, its value and the rule.
    """
    return _validated(RunConfig, data, source)


def read_yaml_mapping(path: Path, missing: str) -> dict[str, Any]:
    """The top-level mapping of YAML file `path` (empty file: ``{}``).

    Raises:
        ConfigError: `missing` (one line naming the file and the fix) when there is no such file;
            a one-line message for a folder, unreadable or non-UTF-8 bytes, invalid YAML or a top level
            that is not a mapping.
    """
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a YAML file: give the config file itself")
    if not path.is_file():
        raise ConfigError(missing)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}): save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, got {type(raw).__name__}")
    return raw


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


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``"train.epochs"``) in a nested dict, returning a new dict."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            child = node.get(p)
            node[p] = dict(child) if isinstance(child, dict) else {}
            node = node[p]
        node[leaf] = value
    return out


# --- self-supervised pretraining ----------------------------------------------------------------------


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


# --- segmentation runs -------------------------------------------------------------------------------


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
