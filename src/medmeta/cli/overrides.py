"""Turn CLI flags into dotted config overrides (``{"train.epochs": 3, ...}``)."""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Any

import yaml

from medmeta.errors import ConfigError


class Device(StrEnum):
    """``--device``: where a run computes (``train.device``)."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def parse_way(text: str | None) -> int | str | None:
    """``"all"`` -> None (every class of the domain), a number -> int; None stays unset (``"unset"``)."""
    if text is None:
        return "unset"
    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--n-way must be a number or 'all', got '{text}'") from None


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``["inner_steps=5", "first_order=true"]`` -> ``{"inner_steps": 5, "first_order": True}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option '{item}' must look like KEY=VALUE, e.g. --option distance=cosine")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def collect(pairs: dict[str, Any]) -> dict[str, Any]:
    """Drop unset flags (None, or the ``"unset"`` marker of `parse_way`, or empty lists)."""
    return {
        k: (v.value if isinstance(v, Enum) else v)
        for k, v in pairs.items()
        if v is not None and v != "unset" and v != []
    }
