"""Checks of a config against the method registries: the part of validation `medmeta.config` cannot do,
since the config is a leaf that imports nothing of medmeta.

Every entry point that takes a config from a user (the CLI's config builders, `train_method`,
`train_segmenter`) calls these before reading any data, so an unknown method or a bad option is one
`ConfigError` line before anything else happens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from medmeta.config import RunConfig, SegConfig, describe_validation_error
from medmeta.errors import ConfigError
from medmeta.methods import METHODS
from medmeta.methods.segmentation import SEG_METHODS


def _check(
    registry: Mapping[str, type[Any]], kind: str, name: str, options: dict[str, Any], source: str
) -> None:
    if name not in registry:
        raise ConfigError(
            f"invalid {source}: method: unknown {kind} '{name}'; choose one of {', '.join(sorted(registry))}"
        )
    try:
        registry[name].Options(**options)
    except ValidationError as exc:
        raise ConfigError(f"invalid {source}: method '{name}': {describe_validation_error(exc)}") from None


def check_method_config(cfg: RunConfig, source: str = "config") -> RunConfig:
    """`cfg` if its method is registered and its options valid for that method.

    Raises:
        ConfigError: ``invalid SOURCE: method: unknown method 'x'; choose one of ...`` or the bad option.
    """
    _check(METHODS, "method", cfg.method.name, cfg.method.options, source)
    return cfg


def check_segmenter_config(cfg: SegConfig, source: str = "config") -> SegConfig:
    """`cfg` if its segmenter is registered and its options valid for it.

    Raises:
        ConfigError: ``invalid SOURCE: method: unknown segmentation method 'x'; choose one of ...`` or the
            bad option.
    """
    _check(SEG_METHODS, "segmentation method", cfg.method.name, cfg.method.options, source)
    return cfg
