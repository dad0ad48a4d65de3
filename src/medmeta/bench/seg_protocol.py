"""A segmentation benchmark protocol (``task: segmentation``): which structures, segmenters, shots and seeds.

Each method is trained once per seed on the training structures (`data.train`) and tested on every test
structure (`data.test`, one column each) for each number of shots, on the seeded episodes ``eval.seed +
seed``; the trivial baselines (Otsu, the mean support mask) are scored on the same episodes. Structures
are named as everywhere in ``medmeta seg``: built-in sources (``drive``, ``em``, ``ct``, ``mr``) or the
path of a user's folder of images with masks (`medmeta.data.segmentation.folder`).

Example:
    >>> p = SegProtocol.model_validate({"task": "segmentation", "name": "tiny",
    ...     "data": {"train": ["em"], "test": ["drive:vessel"]}, "methods": ["panet"]})
    >>> [m.label for m in p.all_methods]
    ['panet', 'otsu', 'support_mean']
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from medmeta.config import (
    SegConfig,
    SegDataConfig,
    SegEpisodeConfig,
    SegEvalConfig,
    TrainConfig,
    describe_validation_error,
    make_seg_config,
    read_yaml_mapping,
)
from medmeta.config._base import _Frozen
from medmeta.errors import ConfigError

if TYPE_CHECKING:
    from medmeta.bench.protocol import Protocol


class SegMethodEntry(_Frozen):
    """One segmenter of the benchmark.

    Attributes:
        name: a key of `medmeta.methods.segmentation.SEG_METHODS`.
        label: its name in the tables (default `name`); lets one method appear twice with other options.
        options: the segmenter's options (validated by its ``Options`` model).
        train: overrides of the protocol's ``train`` section for this method.
    """

    name: str
    label: str = ""
    options: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _default_label(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = {"name": v}
        if isinstance(v, dict) and not v.get("label") and isinstance(v.get("name"), str):
            return {**v, "label": v["name"]}
        return v

    @model_validator(mode="after")
    def _known(self) -> SegMethodEntry:
        from medmeta.methods.segmentation import SEG_METHODS

        if self.name not in SEG_METHODS:
            raise ValueError(
                f"unknown segmentation method '{self.name}'; choose one of {', '.join(sorted(SEG_METHODS))}"
            )
        try:
            SEG_METHODS[self.name].Options(**self.options)
        except ValidationError as exc:
            raise ValueError(f"method '{self.name}': {describe_validation_error(exc)}") from None
        if "seed" in self.train:
            raise ValueError("set training seeds with the top-level 'seeds' list, not train.seed")
        return self

    @property
    def trained(self) -> bool:
        """False for a trivial baseline (nothing to train: it is only scored)."""
        from medmeta.methods.segmentation import SEG_METHODS

        return SEG_METHODS[self.name].training_source != "none"


#: baselines every segmentation table shows unless listed or ``baselines: false``
BASELINES = ("otsu", "support_mean")


class SegProtocol(_Frozen):
    """A whole segmentation benchmark: every (method, test structure, shots, seed) cell."""

    task: Literal["segmentation"]
    name: str = Field(min_length=1)
    description: str = ""
    data: SegDataConfig
    methods: list[SegMethodEntry] = Field(min_length=1)
    baselines: bool = True
    episodes: SegEpisodeConfig = SegEpisodeConfig()
    train: TrainConfig = TrainConfig(epochs=5, episodes_per_epoch=100, val_episodes=20, device="cpu")
    eval: SegEvalConfig = SegEvalConfig()
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)

    @field_validator("data")
    @classmethod
    def _has_test(cls, v: SegDataConfig) -> SegDataConfig:
        if not v.test:
            raise ValueError("data.test is empty: name the structures the benchmark tests on")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SegProtocol:
        labels = [m.label for m in self.all_methods]
        twice = sorted({lbl for lbl in labels if labels.count(lbl) > 1})
        if twice:
            raise ValueError(f"method label(s) {twice} used twice: give each entry its own 'label'")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be distinct non-negative integers, got {self.seeds}")
        if "seed" in self.train.model_fields_set:
            raise ValueError("set training seeds with the top-level 'seeds' list, not train.seed")
        for m in self.methods:
            try:
                TrainConfig.model_validate({**self.train.model_dump(), **m.train})
            except ValidationError as exc:
                raise ValueError(f"method '{m.label}' train: {describe_validation_error(exc)}") from None
        return self

    @property
    def all_methods(self) -> list[SegMethodEntry]:
        """The listed methods, then the trivial baselines not listed (when `baselines`)."""
        listed = {m.name for m in self.methods}
        extra = [SegMethodEntry(name=b) for b in BASELINES if self.baselines and b not in listed]
        return [*self.methods, *extra]

    def run_config(self, method: SegMethodEntry, seed: int, data_dir: str | None = None) -> SegConfig:
        """The `SegConfig` of `method` trained with `seed` (its test episodes are seeded ``eval.seed + seed``);
        `data_dir` replaces ``data.data_dir`` when given."""
        data = self.data.model_dump(mode="json")
        if data_dir is not None:
            data["data_dir"] = data_dir
        raw = {
            "data": data,
            "episodes": self.episodes.model_dump(),
            "method": {"name": method.name, "options": dict(method.options)},
            "train": {**self.train.model_dump(mode="json"), **method.train, "seed": seed},
            "eval": {**self.eval.model_dump(), "seed": self.eval.seed + seed},
        }
        return make_seg_config(raw, source=f"benchmark method '{method.label}'")

    def as_config(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        """Hash of everything that changes results (not the data root): guards resumed runs."""
        payload = self.as_config()
        payload["data"].pop("data_dir", None)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def parse_seg_protocol(raw: dict[str, Any], source: str = "protocol") -> SegProtocol:
    """Validate a plain dict.

    Raises:
        ConfigError: one line naming every bad field, its value and the rule.
    """
    try:
        return SegProtocol.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid {source}: {describe_validation_error(exc)}") from None


def load_any_protocol(path: str | Path) -> Protocol | SegProtocol:
    """Read a benchmark YAML: a `SegProtocol` when it says ``task: segmentation``, else a classification
    `medmeta.bench.protocol.Protocol`.

    Raises:
        ConfigError: a missing file, invalid YAML or an invalid protocol (one line).
    """
    from medmeta.bench.protocol import parse_protocol

    path = Path(path)
    raw = read_yaml_mapping(path, f"benchmark config {path} not found: check the path (see configs/*.yaml)")
    if raw.get("task") == "segmentation":
        return parse_seg_protocol(raw, source=str(path))
    return parse_protocol(raw, source=str(path))
