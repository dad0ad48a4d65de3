"""Few-shot methods behind one interface; `METHODS` maps a name to its class."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from medmeta.errors import ConfigError
from medmeta.methods.base import FewShotMethod, MethodOptions, Predictor
from medmeta.methods.gradient_based.anil import ANIL
from medmeta.methods.gradient_based.maml import FOMAML, MAML
from medmeta.methods.gradient_based.maml_plus_plus import MAMLPlusPlus
from medmeta.methods.gradient_based.meta_sgd import MetaSGD
from medmeta.methods.gradient_based.reptile import Reptile
from medmeta.methods.metric.matching import MatchingNet
from medmeta.methods.metric.protonet import ProtoNet
from medmeta.methods.metric.relation import RelationNet
from medmeta.methods.metric.siamese import SiameseNet
from medmeta.methods.model_based.mann import MANN
from medmeta.methods.model_based.meta_lstm import MetaLSTM
from medmeta.methods.transfer.base import SupervisedMethod, SupervisedOptions
from medmeta.methods.transfer.baseline_pp import BaselinePP
from medmeta.methods.transfer.finetune import Finetune
from medmeta.methods.transfer.linear_probe import LinearProbe
from medmeta.methods.transfer.simpleshot import SimpleShot

METHODS: dict[str, type[FewShotMethod]] = {
    "protonet": ProtoNet,
    "matching": MatchingNet,
    "relation": RelationNet,
    "siamese": SiameseNet,
    "finetune": Finetune,
    "linear_probe": LinearProbe,
    "simpleshot": SimpleShot,
    "baseline_pp": BaselinePP,
    "maml": MAML,
    "fomaml": FOMAML,
    "maml_pp": MAMLPlusPlus,
    "meta_sgd": MetaSGD,
    "anil": ANIL,
    "reptile": Reptile,
    "mann": MANN,
    "meta_lstm": MetaLSTM,
}


def build_method(name: str, backbone: nn.Module, options: dict[str, Any] | None = None) -> FewShotMethod:
    """Build a registered method around `backbone`.

    Raises:
        ConfigError: unknown method name, or an option the method does not have or out of range.
    """
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; choose one of {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    try:
        return cls.from_options(backbone, options)
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        from medmeta.config import describe_validation_error

        raise ConfigError(f"method '{name}': {describe_validation_error(exc)}") from exc


def switch_method(
    method: SupervisedMethod, name: str, options: dict[str, Any] | None = None
) -> SupervisedMethod:
    """The same pretrained weights behind another test-time rule (pretrain once, evaluate many ways).

    Args:
        method: a pretrained transfer baseline.
        name: registered name of another transfer baseline (for example ``linear_probe``).
        options: its test-time options; the pretraining options are taken from `method`.

    Returns:
        A new method holding copies of `method`'s weights, in `method`'s training/eval mode.

    Raises:
        ConfigError: `name` is not a registered transfer baseline.
    """
    cls = METHODS.get(name)
    if cls is None or not issubclass(cls, SupervisedMethod):
        choices = sorted(n for n, c in METHODS.items() if issubclass(c, SupervisedMethod))
        raise ConfigError(f"'{name}' is not a transfer baseline; choose one of {', '.join(choices)}")
    shared = {k: getattr(method.options, k) for k in SupervisedOptions.model_fields}
    new = build_method(name, copy.deepcopy(method.backbone), {**(options or {}), **shared})
    assert isinstance(new, SupervisedMethod)
    new.load_state_dict(method.state_dict(), strict=True)
    new.to(method.feature_mean.device)
    return new.train(method.training)


__all__ = ["METHODS", "FewShotMethod", "MethodOptions", "Predictor", "build_method", "switch_method"]
