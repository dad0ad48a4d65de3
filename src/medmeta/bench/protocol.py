"""A benchmark protocol: which domains, methods, shots and seeds, validated from YAML.

A protocol is leave-one-domain-out: for every held-out domain, each method is (meta-)trained on the
other domains and tested on the held-out domain with all of its classes, for each number of shots.
Only `load_protocol` reads YAML; the rest of `medmeta.bench` receives a frozen `Protocol`.

Example:
    >>> from medmeta.bench.protocol import Protocol
    >>> p = Protocol.model_validate({"name": "tiny", "data": {"domains": ["a", "b"]},
    ...                              "methods": ["protonet"], "eval": {"shots": [1, 5]}})
    >>> p.held_out_domains
    ['a', 'b']
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medmeta.config import (
    ModelConfig,
    TrainConfig,
    describe_validation_error,
    make_pretrain_config,
    read_yaml_mapping,
)
from medmeta.errors import ConfigError, DataError


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MethodEntry(_Frozen):
    """One method of the benchmark.

    Attributes:
        name: registered method name (see `medmeta.methods.METHODS`).
        label: name in the report (default: `name`); lets one method appear twice with other options.
        options: the method's options (validated by its ``Options`` model).
        train: overrides of the protocol's ``train`` section for this method (for example fewer epochs).
    """

    name: str
    label: str = ""
    options: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    backbone: str | None = None
    weights: str | None = None
    input_size: int | None = None
    representation: str | None = None
    frozen: bool = False

    @model_validator(mode="before")
    @classmethod
    def _default_label(cls, v: Any) -> Any:
        if isinstance(v, dict) and not v.get("label") and isinstance(v.get("name"), str):
            return {**v, "label": v["name"]}
        return v

    @model_validator(mode="after")
    def _known_method(self) -> MethodEntry:
        from medmeta.methods import METHODS

        if self.name not in METHODS:
            raise ValueError(f"unknown method '{self.name}'; choose one of {', '.join(sorted(METHODS))}")
        try:
            METHODS[self.name].Options(**self.options)
        except ValidationError as exc:
            raise ValueError(f"method '{self.name}': {describe_validation_error(exc)}") from None
        if "seed" in self.train:
            raise ValueError("set training seeds with the top-level 'seeds' list, not train.seed")
        if self.frozen and self.name not in FROZEN_METHODS:
            raise ValueError(
                f"method '{self.label}': frozen: true evaluates the representation without training, which "
                f"only {', '.join(FROZEN_METHODS)} can do; drop frozen or pick one of them"
            )
        if self.representation is not None and (self.backbone is not None or self.weights is not None):
            raise ValueError(
                f"method '{self.label}': a representation brings its own backbone and weights; drop "
                "backbone/weights or the representation"
            )
        if self.backbone is not None or self.input_size is not None:
            try:
                self.model_section("conv4")
            except ValidationError as exc:
                raise ValueError(f"method '{self.label}': {describe_validation_error(exc)}") from None
        return self

    def model_section(self, default_backbone: str, weights: str | None = None) -> ModelConfig:
        """The entry's `ModelConfig`: its backbone (else `default_backbone`), weights and input size."""
        return ModelConfig.model_validate(
            {
                "backbone": self.backbone or default_backbone,
                "weights": weights or self.weights,
                "input_size": self.input_size,
            }
        )


#: methods that adapt on a support set with nothing learned beyond the backbone (``frozen: true``)
FROZEN_METHODS = ("protonet", "linear_probe", "finetune")


class RepresentationEntry(_Frozen):
    """A self-supervised representation the benchmark pretrains for each held-out domain (`medmeta pretrain`).

    Attributes:
        name: what method entries call it (``representation: NAME``).
        ssl: ``simclr``, ``moco``, ``byol`` or ``dino``.
        sees_held_out: setting (b): the held-out domain's unlabelled training and validation images join
            the pool (never its test images). False is setting (a): the training domains' images only.
        backbone: default the protocol's backbone.
        options: `medmeta.config.SSLConfig` fields (batch_size, temperature, ...).
        augment: `medmeta.config.AugmentConfig` fields.
        train: `TrainConfig` fields of the pretraining (epochs, lr, ...); seeds come from ``seeds``.
        max_images: a seeded choice of at most this many pooled images.
        pretrained: for a library backbone (``timm:ARCH``): start from its hub weights (True) or from
            random weights (False: self-supervised pretraining from scratch, e.g. a ResNet-18).
        input_size: for a library backbone: the side it runs at instead of its weights' own (e.g. 28, the
            protocol's image size, rather than timm's 224).
    """

    name: str = Field(min_length=1)
    ssl: Literal["simclr", "moco", "byol", "dino"] = "simclr"
    sees_held_out: bool = False
    backbone: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    augment: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    max_images: int | None = Field(None, ge=2)
    pretrained: bool = True
    input_size: int | None = Field(None, ge=16, le=1024)

    @model_validator(mode="after")
    def _valid_parts(self) -> RepresentationEntry:
        if "seed" in self.train:
            raise ValueError("set pretraining seeds with the top-level 'seeds' list, not train.seed")
        try:
            make_pretrain_config(
                self.pretrain_section("conv4", 28, 3, 0), source=f"representation {self.name}"
            )
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def pretrain_section(
        self, default_backbone: str, image_size: int, channels: int, seed: int
    ) -> dict[str, Any]:
        """The `PretrainConfig` of this representation (its domains are set by the job)."""
        return {
            "data": {
                "domains": ["_"],
                "image_size": image_size,
                "channels": channels,
                "max_images": self.max_images,
            },
            "model": {
                "backbone": self.backbone or default_backbone,
                **({} if self.pretrained else {"pretrained": False}),
                **({} if self.input_size is None else {"input_size": self.input_size}),
            },
            "ssl": {"method": self.ssl, **self.options},
            "augment": dict(self.augment),
            "train": {"val_episodes": 0, **self.train, "seed": seed},
        }


class RawPixelSection(_Frozen):
    """The raw-pixel baseline every table shows: nearest class mean (``pixels_ncm``) and logistic regression
    (``pixels_logreg``) on the image average-pooled to ``grid x grid`` (`medmeta.models.pixels`)."""

    enabled: bool = True
    grid: int = Field(8, ge=1, le=64)

    def entries(self) -> list[MethodEntry]:
        backbone = f"pixels:{self.grid}"
        return [
            MethodEntry(name="protonet", label="pixels_ncm", backbone=backbone, frozen=True),
            MethodEntry(name="linear_probe", label="pixels_logreg", backbone=backbone, frozen=True),
        ]


class DataSection(_Frozen):
    """The domains.

    Attributes:
        domains: dataset names (see ``medmeta data list``) or folder paths; every one is a training
            domain when another is held out.
        held_out: the domains tested in turn (default: every domain).
        related: groups of domains that share classes or images (for example organamnist and
            organcmnist): while one member is held out, the others are left out of training.
        image_size: side of the square images (MedMNIST sets: a ``NAME_SIZE`` file is preferred).
        channels: 1 (grey) or 3 (RGB).
        test_fraction: share of a domain without a test split that becomes its test set (stratified,
            seeded by `split_seed`).
        val_fraction: share of a domain's training images held out for validation when it has no
            val split.
        split_seed: seeds those splits.
        dedupe: keep one image per near-duplicate group of each domain before splitting (the training
            copy when a group spans the dataset's own splits; `medmeta.data.near_duplicates`).
        data_dir: data root (default ``--data-dir`` or ``$MEDMETA_DATA``).
    """

    domains: list[str] = Field(min_length=2)
    held_out: list[str] | None = None
    related: list[list[str]] = Field(default_factory=list)
    image_size: int = Field(64, ge=8, le=512)
    channels: Literal[1, 3] = 3
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    split_seed: int = Field(0, ge=0)
    dedupe: bool = False
    data_dir: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DataSection:
        if len(set(self.domains)) != len(self.domains):
            raise ValueError(f"a domain is listed twice in {self.domains}")
        for what, names in (("held_out", self.held_out or []), *(("related", g) for g in self.related)):
            unknown = [n for n in names if n not in self.domains]
            if unknown:
                raise ValueError(f"{what} names {unknown}, which are not in domains {self.domains}")
        return self


class EpisodeSection(_Frozen):
    """Meta-training episodes (``n_way: null``: every class of the episode's domain)."""

    n_way: int | None = Field(None, ge=2)
    n_shot: int = Field(5, ge=1)
    n_query: int = Field(15, ge=1)


class EvalSection(_Frozen):
    """Test episodes on the held-out domain, all of its classes per episode.

    Attributes:
        shots: support images per class, one result per entry.
        n_query: query images per class (lowered for a domain whose smallest test class is too small;
            the report says so).
        episodes: test episodes per (method, domain, shots, seed).
        seed: base seed of the test episodes (training seed ``s`` uses ``seed + s``).
        calibration_episodes: episodes of the training domains' validation images on which each cell's
            temperature is fitted (`medmeta.bench.calibration`; the report's ``ECE cal.``); 0: none.
        loo_episodes: the first this many test episodes of each cell are also calibrated from their own
            support (a temperature fitted on its leave-one-out predictions, `medmeta.eval.loo`; the report's
            ``ECE LOO``); it costs one adaptation per support image for methods that adapt their backbone;
            0: none.
    """

    shots: list[int] = Field(default_factory=lambda: [1, 5, 10], min_length=1)
    n_query: int = Field(15, ge=1)
    episodes: int = Field(600, ge=2)
    seed: int = Field(12345, ge=0)
    calibration_episodes: int = Field(100, ge=0)
    loo_episodes: int = Field(0, ge=0)

    @field_validator("shots")
    @classmethod
    def _good_shots(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError(f"shots must be positive integers, got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"a number of shots is listed twice in {v}")
        return sorted(v)


class ReferenceSection(_Frozen):
    """The fully-supervised upper bound: the same backbone trained on the held-out domain's training split.

    Attributes:
        enabled: train and test it.
        method: a transfer baseline whose supervised pretraining is reused (its classification head
            predicts the test split).
        epochs: passes of `steps_per_epoch` mini-batches.
        steps_per_epoch: mini-batches per epoch.
        batch_size: images per mini-batch.
        lr: Adam learning rate.
        few_shot: also test its features in the held-out domain's few-shot episodes (the methods' own
            episodes, every number of shots, the reference method's `adapt`): what a representation trained
            with every label of the domain gives from K labelled images, the ceiling of a label-free one.
    """

    enabled: bool = True
    method: str = "simpleshot"
    epochs: int = Field(10, ge=1)
    steps_per_epoch: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    few_shot: bool = True

    @field_validator("method")
    @classmethod
    def _supervised(cls, v: str) -> str:
        from medmeta.methods import METHODS

        choices = sorted(n for n, c in METHODS.items() if c.trainer == "supervised")
        if v not in choices:
            raise ValueError(f"reference.method must be a transfer baseline, one of {', '.join(choices)}")
        return v


class Protocol(_Frozen):
    """A whole benchmark: every (method, held-out domain, shots, seed) cell."""

    task: Literal["classification"] = "classification"
    name: str = Field(min_length=1)
    description: str = ""
    data: DataSection
    methods: list[MethodEntry] = Field(min_length=1)
    backbone: str = "conv4"
    representations: list[RepresentationEntry] = Field(default_factory=list)
    raw_pixels: RawPixelSection = RawPixelSection()
    episodes: EpisodeSection = EpisodeSection()
    train: TrainConfig = TrainConfig()
    eval: EvalSection = EvalSection()
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    reference: ReferenceSection = ReferenceSection()

    @field_validator("methods", mode="before")
    @classmethod
    def _names_as_entries(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": m} if isinstance(m, str) else m for m in v]
        return v

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        ModelConfig(backbone=v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Protocol:
        labels = [m.label for m in self.all_methods]
        names = [r.name for r in self.representations]
        if len(set(names)) != len(names):
            raise ValueError(f"a representation name is used twice in {names}")
        for m in self.methods:
            if m.representation is not None and m.representation not in names:
                raise ValueError(
                    f"method '{m.label}' names representation '{m.representation}', which is not in "
                    f"representations {names}"
                )
            model = m.model_section(self.backbone)
            learned = model.raw_pixels or model.from_library or model.weights is not None
            if m.frozen and m.representation is None and not learned:
                raise ValueError(
                    f"method '{m.label}': frozen: true needs something already learned: a representation, "
                    "weights (a library's, or a medmeta pretrain checkpoint RUN/best.json) or the raw pixels "
                    "(backbone: pixels)"
                )
        twice = sorted({lbl for lbl in labels if labels.count(lbl) > 1})
        if twice:
            raise ValueError(f"method label(s) {twice} used twice: give each entry its own 'label'")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"a seed is listed twice in {self.seeds}")
        if any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be non-negative integers, got {self.seeds}")
        if "seed" in self.train.model_fields_set:
            raise ValueError("set training seeds with the top-level 'seeds' list, not train.seed")
        for m in self.all_methods:
            try:
                TrainConfig.model_validate({**self.train.model_dump(), **m.train})
            except ValidationError as exc:
                raise ValueError(f"methods '{m.label}' train: {describe_validation_error(exc)}") from None
        return self

    @property
    def all_methods(self) -> list[MethodEntry]:
        """The listed methods, then the raw-pixel baseline's entries (when enabled and not listed)."""
        listed = {m.label for m in self.methods}
        extra = self.raw_pixels.entries() if self.raw_pixels.enabled else []
        return [*self.methods, *(m for m in extra if m.label not in listed)]

    def representation(self, name: str) -> RepresentationEntry:
        return next(r for r in self.representations if r.name == name)

    def pretrain_domains(self, rep: RepresentationEntry, held_out: str) -> list[str]:
        """Domains whose unlabelled images pretrain `rep` while `held_out` is tested (setting a or b)."""
        domains = self.training_domains(held_out)
        return [*domains, held_out] if rep.sees_held_out else domains

    @property
    def held_out_domains(self) -> list[str]:
        return list(self.data.held_out or self.data.domains)

    def training_domains(self, held_out: str) -> list[str]:
        """Domains trained on while `held_out` is tested (related domains are left out too)."""
        blocked = {held_out}
        for group in self.data.related:
            if held_out in group:
                blocked.update(group)
        return [d for d in self.data.domains if d not in blocked]

    def train_config(self, method: MethodEntry, seed: int) -> TrainConfig:
        """The protocol's training section with the method's overrides and `seed`."""
        return TrainConfig.model_validate({**self.train.model_dump(), **method.train, "seed": seed})

    def as_config(self) -> dict[str, Any]:
        """The protocol as a complete config dict that `parse_protocol` reads back unchanged."""
        return self.model_dump(mode="json", exclude={"train": {"seed"}})

    def fingerprint(self) -> str:
        """Hash of everything that changes results (not the data root): guards resumed runs.

        Fields added after runs existed (`_ADDED_LATER`) enter the hash only when set away from their
        default, so a run folder from before they existed still resumes.
        """
        payload = self.as_config()
        payload["data"].pop("data_dir", None)
        for section, name, default in _ADDED_LATER:
            _drop_defaults(payload[section], ((name, default),))
        _drop_defaults(payload, _ADDED_LATER_TOP)
        for entry in payload["methods"]:
            _drop_defaults(entry, _ADDED_LATER_METHOD)
        for entry in payload.get("representations", []):
            _drop_defaults(entry, _ADDED_LATER_REPRESENTATION)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _drop_defaults(mapping: dict[str, Any], fields: tuple[tuple[str, Any], ...]) -> None:
    """Remove from `mapping` each ``(name, default)`` of `fields` whose value is that default."""
    for name, default in fields:
        if mapping.get(name) == default:
            mapping.pop(name, None)


#: ``(section, field, default)`` of protocol fields added after benchmark runs existed.
_ADDED_LATER: tuple[tuple[str, str, Any], ...] = (
    ("data", "dedupe", False),
    ("eval", "calibration_episodes", 100),
    ("eval", "loo_episodes", 0),
    ("reference", "few_shot", True),
)
#: top-level protocol fields added after benchmark runs existed, with their defaults
_ADDED_LATER_TOP: tuple[tuple[str, Any], ...] = (
    ("task", "classification"),
    ("representations", []),
    ("raw_pixels", {"enabled": True, "grid": 8}),
)
#: representation fields added after benchmark runs existed, with their defaults
_ADDED_LATER_REPRESENTATION: tuple[tuple[str, Any], ...] = (("pretrained", True), ("input_size", None))
#: method-entry fields added after benchmark runs existed, with their defaults
_ADDED_LATER_METHOD: tuple[tuple[str, Any], ...] = (
    ("backbone", None),
    ("weights", None),
    ("input_size", None),
    ("representation", None),
    ("frozen", False),
)


def parse_protocol(raw: dict[str, Any], source: str = "protocol") -> Protocol:
    """Validate a plain dict.

    Raises:
        ConfigError: one line naming every bad field, its value and the rule.
    """
    try:
        protocol = Protocol.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid {source}: {describe_validation_error(exc)}") from None
    for held in protocol.held_out_domains:
        if not protocol.training_domains(held):
            raise ConfigError(
                f"invalid {source}: holding out '{held}' leaves no training domain: add domains or "
                "shrink its 'related' group"
            )
    return protocol


def load_protocol(path: str | Path) -> Protocol:
    """Read and validate a protocol YAML file (domains are checked against the data by `check_domains`)."""
    path = Path(path)
    raw = read_yaml_mapping(path, f"benchmark config {path} not found: check the path (see configs/*.yaml)")
    return parse_protocol(raw, source=str(path))


def dataset_name(domain: str, image_size: int, root: str | Path | None) -> str:
    """The dataset a domain entry loads: ``NAME_SIZE`` for a MedMNIST set when that file exists.

    Raises:
        ConfigError: no dataset of that name under the data root (the message lists what exists).
    """
    from medmeta.data.registry import list_datasets, resolve

    if "/" not in domain and image_size != 28:
        sized = f"{domain}_{image_size}"
        if any(e.name == sized and e.kind == "medmnist" for e in list_datasets(root)):
            return sized
    try:
        resolve(domain, root)
    except DataError as exc:
        raise ConfigError(f"unknown domain '{domain}' in the benchmark config: {exc}") from None
    return domain


def check_domains(protocol: Protocol, root: str | Path | None) -> dict[str, str]:
    """Map every domain entry to the dataset it loads, failing early on an unknown one."""
    return {d: dataset_name(d, protocol.data.image_size, root) for d in protocol.data.domains}
