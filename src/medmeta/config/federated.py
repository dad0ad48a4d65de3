"""Federated few-shot learning (``medmeta federated``): `FederatedConfig` and its sections.

One domain per site (a hospital); sites train together through Flower and send only parameters; each site
then adapts from a few shots and is tested on its own held-out images. See docs/federated.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medmeta.config._base import _Frozen, _validated, apply_overrides, read_yaml_mapping, unique_entries

Strategy = Literal["fedmeta_maml", "fedmeta_meta_sgd", "per_fedavg", "fedavg", "fedprox"]
Learner = Literal["maml", "meta_sgd", "per_fedavg", "supervised"]
Engine = Literal["simulation", "processes"]
#: every federated strategy, in report order
STRATEGIES: tuple[Strategy, ...] = ("fedmeta_maml", "fedmeta_meta_sgd", "per_fedavg", "fedavg", "fedprox")
#: the local learner of each strategy (FedProx is FedAvg's learner with a proximal term)
STRATEGY_LEARNER: dict[Strategy, Learner] = {
    "fedmeta_maml": "maml",
    "fedmeta_meta_sgd": "meta_sgd",
    "per_fedavg": "per_fedavg",
    "fedavg": "supervised",
    "fedprox": "supervised",
}


_FEDAVG: list[Strategy] = ["fedavg"]
_MAML: list[Learner] = ["maml"]


class SitesConfig(_Frozen):
    """The sites: one domain each, split once into training and held-out test images.

    Attributes:
        sites: registry names or folder / ``.npz`` paths, one per site (at least two).
        image_size: side of the square images.
        channels: 1 (grey) or 3.
        test_fraction: share of a domain without a published ``test`` split held out (stratified, seeded).
        split_seed: seeds that hold-out.
        data_dir: data root of the sites (default ``$MEDMETA_DATA``); never read by the server.
    """

    sites: list[str] = Field(min_length=2)
    image_size: int = Field(28, ge=8, le=512)
    channels: Literal[1, 3] = 3
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    split_seed: int = Field(0, ge=0)
    data_dir: str | None = None

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, value: list[str]) -> list[str]:
        return unique_entries(value, "site")


class FedTrainConfig(_Frozen):
    """Training: rounds of local steps at every site (federated), or the same steps in one process.

    Attributes:
        rounds: communication rounds.
        local_steps: optimiser steps a site takes per round (one episode, or one mini-batch, per step).
        lr: learning rate of the local optimiser (a fresh one every round, as in FedAvg).
        optimizer: ``adam`` or ``sgd``.
        n_shot: support images per class of a meta-training episode (all classes of the site).
        n_query: query images per class of a meta-training episode.
        batch_size: images per step of the supervised learner (FedAvg, FedProx).
        mu: FedProx's proximal weight: the loss gains ``mu / 2 * ||w - w_global||^2``.
        weighting: server average weighted by each site's training images (``examples``) or ``uniform``.
        seed: initial weights and every site's episodes.
        threads: torch intra-op threads per process (0: torch's default).
    """

    rounds: int = Field(10, ge=1)
    local_steps: int = Field(5, ge=1)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    optimizer: Literal["adam", "sgd"] = "adam"
    n_shot: int = Field(5, ge=1)
    n_query: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=2)
    mu: float = Field(0.01, gt=0.0)
    weighting: Literal["examples", "uniform"] = "examples"
    seed: int = Field(0, ge=0)
    threads: int = Field(0, ge=0)


class FedEvalConfig(_Frozen):
    """Few-shot test at each site on its own held-out images (all of its classes per episode).

    Attributes:
        shots: K, support images per class (one result per value).
        n_query: query images per class (fewer where a test class is too small).
        episodes: test episodes per site and K.
        seed: seeds the test episodes (the same for every strategy).
    """

    shots: list[int] = Field(default_factory=lambda: [5], min_length=1)
    n_query: int = Field(15, ge=1)
    episodes: int = Field(200, ge=2)
    seed: int = Field(12345, ge=0)

    @field_validator("shots")
    @classmethod
    def _positive_unique_shots(cls, value: list[int]) -> list[int]:
        if any(k < 1 for k in value):
            raise ValueError(f"shots must be at least 1, got {value}")
        return unique_entries(value, "shots")


class DPConfig(_Frozen):
    """Differential privacy of the site updates (Opacus DP-SGD: per-image clipping, Gaussian noise).

    Attributes:
        epsilon: target epsilon per site over the whole run (None: no DP run).
        delta: delta of the guarantee (None: 1 / training images of the site, per site).
        max_grad_norm: per-image gradient clipping norm.
        strategies: the strategies run again with DP (only those with a first-order, per-image
            gradient: ``fedavg``, ``fedprox``; see docs/federated.md).
    """

    epsilon: float | None = Field(None, gt=0.0)
    delta: float | None = Field(None, gt=0.0, lt=1.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    strategies: list[Strategy] = Field(default_factory=lambda: list(_FEDAVG), min_length=1)

    @field_validator("strategies")
    @classmethod
    def _per_image_strategies(cls, value: list[Strategy]) -> list[Strategy]:
        bad = [s for s in value if STRATEGY_LEARNER[s] != "supervised"]
        if bad:
            raise ValueError(
                f"DP with {', '.join(bad)} is not supported: Opacus's per-image gradients do not go through "
                "the inner loop of a meta-learner; use fedavg or fedprox"
            )
        return unique_entries(value, "DP strategy")


class FederatedConfig(_Frozen):
    """A federated run (``medmeta federated``); written to ``OUT/config.yaml``.

    Attributes:
        data: the sites.
        strategies: federated strategies (Flower): ``fedmeta_maml``, ``fedmeta_meta_sgd``, ``per_fedavg``,
            ``fedavg``, ``fedprox``.
        centralised: learners trained once on every site's training images pooled in one process.
        site_only: learners trained at each site alone (no communication).
        methods: medmeta method options of each learner (``maml``, ``meta_sgd``, ``per_fedavg``: the
            first-order MAML of Per-FedAvg; ``supervised``: the fine-tuning baseline); ``n_way`` is set
            from the sites.
        train: rounds and local steps.
        eval: the few-shot test.
        dp: differential privacy.
        engine: ``simulation`` (Flower's simulation engine) or ``processes`` (a SuperLink and one SuperNode
            per site, separate processes over loopback).
    """

    data: SitesConfig
    strategies: list[Strategy] = Field(default_factory=lambda: list(STRATEGIES))
    centralised: list[Learner] = Field(default_factory=lambda: list(_MAML))
    site_only: list[Learner] = Field(default_factory=lambda: list(_MAML))
    methods: dict[Learner, dict[str, Any]] = Field(default_factory=dict)
    train: FedTrainConfig = FedTrainConfig()
    eval: FedEvalConfig = FedEvalConfig()
    dp: DPConfig = DPConfig()
    engine: Engine = "simulation"

    @field_validator("strategies", "centralised", "site_only")
    @classmethod
    def _unique_entries(cls, value: list[Any]) -> list[Any]:
        return unique_entries(value, "entry")

    @model_validator(mode="after")
    def _something_to_run(self) -> FederatedConfig:
        if not (self.strategies or self.centralised or self.site_only or self.dp.epsilon):
            raise ValueError("nothing to run: list strategies, centralised or site_only learners")
        return self


def make_federated_config(data: dict[str, Any], source: str = "config") -> FederatedConfig:
    """Validate a plain dict into a `FederatedConfig`.

    Raises:
        ConfigError: one line naming every bad field, its value and the rule.
    """
    return _validated(FederatedConfig, data, source)


def load_federated_config(path: str | Path, overrides: dict[str, Any] | None = None) -> FederatedConfig:
    """Read a YAML federated config and apply dotted `overrides` (``{"train.rounds": 5}``)."""
    p = Path(path)
    raw = read_yaml_mapping(p, f"config file {p} not found: check the path")
    return make_federated_config(apply_overrides(raw, overrides or {}), source=str(p))
