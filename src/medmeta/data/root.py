"""Where medmeta looks for data: ``--data-dir``, else ``$MEDMETA_DATA``, else a cache dir in the user's home."""

from __future__ import annotations

import os
from pathlib import Path

from medmeta.errors import DataError

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


def existing_data_root(override: str | os.PathLike[str] | None = None) -> Path:
    """`data_root`, checked: a root chosen by `override` or ``$MEDMETA_DATA`` must be an existing folder.

    The default cache dir may be missing (nothing downloaded yet).

    Raises:
        DataError: the chosen root does not exist or is not a folder.
    """
    root = data_root(override)
    if override is not None and str(override) != "":
        chosen = "--data-dir"
    elif os.environ.get(ENV_VAR):
        chosen = f"${ENV_VAR}"
    else:
        return root
    if not root.exists():
        raise DataError(f"data root {root} (from {chosen}) does not exist: check the path")
    if not root.is_dir():
        raise DataError(f"data root {root} (from {chosen}) is not a folder: give the data folder")
    return root
