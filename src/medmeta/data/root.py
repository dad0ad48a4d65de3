"""Where medmeta looks for data: ``--data-dir``, else ``$MEDMETA_DATA``, else a cache dir in the user's home."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "MEDMETA_DATA"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/medmeta`` (default ``~/.cache/medmeta``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medmeta"


def data_root(override: str | os.PathLike[str] | None = None) -> Path:
    """The data root: `override` if given, else ``$MEDMETA_DATA``, else `default_cache_dir`."""
    if override is not None and str(override) != "":
        return Path(override).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return default_cache_dir()
