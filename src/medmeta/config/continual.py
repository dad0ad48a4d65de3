"""Continual few-shot learning (``medmeta continual``): `ContinualConfig` and its sections.

A stream of stages brings new classes, each with K labelled training images; after every stage one
classifier over all classes seen so far is tested (class-incremental). See docs/continual.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medmeta.config._base import _Frozen, _validated, apply_overrides, read_yaml_mapping, unique_entries
from medmeta.config.run import ModelConfig

Strategy = Literal["naive", "replay", "prototypes", "joint"]
BufferPolicy = Literal["reservoir", "class_balanced"]
_CLASS_BALANCED: list[BufferPolicy] = ["class_balanced"]
#: every strategy, in the order the reports list them
STRATEGIES: tuple[Strategy, ...] = ("naive", "replay", "prototypes", "joint")


class StreamConfig(_Frozen):
    """The stages and their images.

    Attributes:
        stages: one domain spec per stage, ``NAME[:CLASS,CLASS,...]`` or a folder / ``.npz`` path (see
            `medmeta.data.registry.DomainSpec`; no ``@SPLIT``: shots come from the training images, tests
            from the test images). Class names are prefixed with their dataset's name, so two stages may
            share a dataset only with disjoint classes.
        shots: K, labelled training images per new class (one run per value).
        test_per_class: at most this many test images per class (a seeded choice; None: all).
        test_fraction: share of a dataset without a published ``test`` split held out as its test images
            (stratified, by patient when patient ids exist).
        split_seed: seeds that hold-out and the choice of test images (the same for every run seed).
        image_size: side of the square images; None: the start checkpoint's, else 64.
        channels: 1 (grey) or 3 (RGB; grey images are repeated).
        data_dir: data root (default ``$MEDMETA_DATA``).
        skip_bad: skip unreadable image files instead of stopping.
        dedupe: keep one image per near-duplicate group first (`medmeta.data.near_duplicates`), so no test
            image has a near-copy among the training images.
    """

    stages: list[str] = Field(min_length=2)
    shots: list[int] = Field(default_factory=lambda: [5], min_length=1)
    test_per_class: int | None = Field(50, ge=1)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: int = Field(0, ge=0)
    image_size: int | None = Field(None, ge=8, le=512)
    channels: Literal[1, 3] = 3
    data_dir: str | None = None
    skip_bad: bool = False
    dedupe: bool = False

    @field_validator("shots")
    @classmethod
    def _positive_unique_shots(cls, value: list[int]) -> list[int]:
        if any(k < 1 for k in value):
            raise ValueError(f"shots must be at least 1, got {value}")
        return unique_entries(value, "shots")


class ContinualTrainConfig(_Frozen):
    """How the fine-tuning strategies (naive, replay, joint) learn each stage.

    Attributes:
        steps: Adam steps per stage.
        batch_size: images of the new stage per step (all of them when fewer).
        lr: Adam learning rate (a fresh optimiser per stage).
        weight_decay: Adam weight decay.
        grad_clip: clip the gradient norm to this value (None: no clipping).
        finetune: ``full``: backbone and classifier are trained; ``head``: only the classifier (the backbone
            stays fixed, in eval mode).
        flip: random horizontal and vertical flips of training images (seeded).
        seeds: one run per seed (shots drawn, weights initialised, batches ordered by it).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        threads: torch intra-op threads (0: torch's default).
    """

    steps: int = Field(100, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float | None = Field(None, gt=0.0)
    finetune: Literal["full", "head"] = "full"
    flip: bool = True
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0)

    @field_validator("seeds")
    @classmethod
    def _nonnegative_unique_seeds(cls, value: list[int]) -> list[int]:
        if any(s < 0 for s in value):
            raise ValueError(f"seeds must be >= 0, got {value}")
        return unique_entries(value, "seed")


class ReplayConfig(_Frozen):
    """Experience replay: a fixed-size buffer of earlier stages' training images.

    Attributes:
        buffer: images the buffer holds at most (what a hospital may keep).
        policies: which images stay (one replay run per policy): ``reservoir`` (a uniform sample of every
            image seen) or ``class_balanced`` (equal counts per class).
        batch_size: buffer images mixed into every step (None: ``train.batch_size``; all when fewer).
    """

    buffer: int = Field(50, ge=1)
    policies: list[BufferPolicy] = Field(default_factory=lambda: list(_CLASS_BALANCED), min_length=1)
    batch_size: int | None = Field(None, ge=1)

    @field_validator("policies")
    @classmethod
    def _unique_policies(cls, value: list[BufferPolicy]) -> list[BufferPolicy]:
        return unique_entries(value, "buffer policy")


class PrototypeConfig(_Frozen):
    """The prototype strategy: nearest class mean of fixed backbone features.

    Attributes:
        distance: ``cosine`` or ``sqeuclidean`` between a feature and the class means.
    """

    distance: Literal["cosine", "sqeuclidean"] = "cosine"


class ContinualConfig(_Frozen):
    """A continual few-shot run (``medmeta continual``); written to ``OUT/config.yaml``.

    Attributes:
        data: the stream of stages.
        strategies: ``naive``, ``replay``, ``prototypes``, ``joint`` (see `medmeta.train.continual`).
        checkpoint: a ``medmeta train`` checkpoint (``RUN/best.json``, meta-trained or supervised) whose
            backbone every strategy starts from, instead of `model`.
        model: the backbone when there is no `checkpoint`: ``conv4``/``resnet12`` from scratch or from a
            ``medmeta pretrain`` checkpoint (``weights: RUN/best.json``), a library backbone, or ``pixels``.
        train: the fine-tuning strategies' training.
        replay: the replay buffer.
        prototypes: the prototype strategy.
    """

    data: StreamConfig
    strategies: list[Strategy] = Field(default_factory=lambda: list(STRATEGIES), min_length=1)
    checkpoint: str | None = None
    model: ModelConfig = ModelConfig()
    train: ContinualTrainConfig = ContinualTrainConfig()
    replay: ReplayConfig = ReplayConfig()
    prototypes: PrototypeConfig = PrototypeConfig()

    @field_validator("strategies")
    @classmethod
    def _unique_strategies(cls, value: list[Strategy]) -> list[Strategy]:
        return unique_entries(value, "strategy")

    @model_validator(mode="after")
    def _one_start(self) -> ContinualConfig:
        if self.checkpoint is not None and self.model != ModelConfig():
            raise ValueError(
                "checkpoint and model both name a start: give a medmeta train checkpoint or a backbone "
                "(with its weights), not both"
            )
        return self


def make_continual_config(data: dict[str, Any], source: str = "config") -> ContinualConfig:
    """Validate a plain dict into a `ContinualConfig`.

    Raises:
        ConfigError: one line naming every bad field, its value and the rule.
    """
    return _validated(ContinualConfig, data, source)


def load_continual_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ContinualConfig:
    """Read a YAML continual config and apply dotted `overrides` (``{"train.steps": 50}``)."""
    p = Path(path)
    raw = read_yaml_mapping(p, f"config file {p} not found: check the path")
    return make_continual_config(apply_overrides(raw, overrides or {}), source=str(p))
