"""What every config model shares: frozen pydantic models, one-line validation errors, YAML reading and
dotted overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from medmeta.errors import ConfigError

C = TypeVar("C", bound=BaseModel)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def describe_validation_error(exc: Exception) -> str:
    """One line from a pydantic error: ``field.path=value: reason`` for each problem."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f"={value!r}"
        parts.append(f"{loc}{shown}: {err['msg']}")
    return "; ".join(parts)


def _validated(model: type[C], data: dict[str, Any], source: str) -> C:
    """`model` validated from `data`, or one `ConfigError` line naming every bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {source}: {describe_validation_error(exc)}") from None


def unique_entries(values: list[Any], what: str) -> list[Any]:
    """`values` unchanged, or a `ValueError` naming every entry listed more than once (for validators)."""
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{what} {', '.join(repeated)} listed twice: list each once")
    return values


def read_yaml_mapping(path: Path, missing: str) -> dict[str, Any]:
    """The top-level mapping of YAML file `path` (empty file: ``{}``).

    Raises:
        ConfigError: `missing` (one line naming the file and the fix) when there is no such file;
            a one-line message for a folder, unreadable or non-UTF-8 bytes, invalid YAML or a top level
            that is not a mapping.
    """
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a YAML file: give the config file itself")
    if not path.is_file():
        raise ConfigError(missing)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}): save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``"train.epochs"``) in a nested dict, returning a new dict."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            child = node.get(p)
            node[p] = dict(child) if isinstance(child, dict) else {}
            node = node[p]
        node[leaf] = value
    return out
