"""Few-shot methods behind one interface; `METHODS` maps a name to its class."""

from __future__ import annotations

from typing import Any

from torch import nn

from medmeta.errors import ConfigError
from medmeta.methods.anil import ANIL
from medmeta.methods.base import FewShotMethod, MethodOptions, Predictor
from medmeta.methods.baseline_pp import BaselinePP
from medmeta.methods.finetune import Finetune
from medmeta.methods.linear_probe import LinearProbe
from medmeta.methods.maml import FOMAML, MAML
from medmeta.methods.maml_plus_plus import MAMLPlusPlus
from medmeta.methods.matching import MatchingNet
from medmeta.methods.meta_sgd import MetaSGD
from medmeta.methods.protonet import ProtoNet
from medmeta.methods.relation import RelationNet
from medmeta.methods.reptile import Reptile
from medmeta.methods.siamese import SiameseNet
from medmeta.methods.simpleshot import SimpleShot

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


__all__ = ["METHODS", "FewShotMethod", "MethodOptions", "Predictor", "build_method"]
