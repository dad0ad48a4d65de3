"""MONAI and SimpleITK for registration, imported on first use with an error that says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from medmeta._optional import OptionalDependencyError, optional_import

REGISTRATION_EXTRA = "medmeta[registration]"


def monai_module(submodule: str, feature: str) -> ModuleType:
    """``monai.<submodule>`` (``losses``, ``networks.nets``, ``networks.blocks``), or an error naming the extra."""
    optional_import("monai", feature)
    return importlib.import_module(f"monai.{submodule}")


def simpleitk(feature: str) -> ModuleType:
    """The SimpleITK module, or an `OptionalDependencyError` saying ``pip install 'medmeta[registration]'``."""
    try:
        return optional_import("SimpleITK", feature)
    except OptionalDependencyError as exc:
        raise OptionalDependencyError(
            f"{feature} needs the optional package 'SimpleITK': run `pip install '{REGISTRATION_EXTRA}'`"
        ) from exc
