"""Checks of a config against the method registries: the part of validation `medmeta.config` cannot do,
since the config is a leaf that imports nothing of medmeta.

Every entry point that takes a config from a user (the CLI's config builders, `train_method`,
`train_segmenter`) calls these before reading any data, so an unknown method or a bad option is one
`ConfigError` line before anything else happens.
"""

from __future__ import annotations

from pydantic import ValidationError

from medmeta.config import RunConfig, SegConfig, describe_validation_error
from medmeta.errors import ConfigError
from medmeta.methods import METHODS
from medmeta.methods.segmentation import SEG_METHODS


def check_method_config(cfg: RunConfig, source: str = "config") -> RunConfig:
    """`cfg` if its method is registered and its options valid for that method.

    Raises:
        ConfigError: ``invalid SOURCE: method: unknown method 'x'; choose one of ...`` or the bad option.
    """
    name = cfg.method.name
    if name not in METHODS:
        raise ConfigError(
            f"invalid {source}: method: unknown method '{name}'; choose one of {', '.join(sorted(METHODS))}"
        )
    try:
        METHODS[name].Options(**cfg.method.options)
    except ValidationError as exc:
        raise ConfigError(f"invalid {source}: method '{name}': {describe_validation_error(exc)}") from None
    return cfg


def check_segmenter_config(cfg: SegConfig, source: str = "config") -> SegConfig:
    """`cfg` if its segmenter is registered and its options valid for it.

    Raises:
        ConfigError: ``invalid SOURCE: method: unknown segmentation method 'x'; choose one of ...`` or the
            bad option.
    """
    name = cfg.method.name
    if name not in SEG_METHODS:
        raise ConfigError(
            f"invalid {source}: method: unknown segmentation method '{name}'; choose one of "
            f"{', '.join(sorted(SEG_METHODS))}"
        )
    try:
        SEG_METHODS[name].Options(**cfg.method.options)
    except ValidationError as exc:
        raise ConfigError(f"invalid {source}: method '{name}': {describe_validation_error(exc)}") from None
    return cfg
