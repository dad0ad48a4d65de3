"""Where the peer libraries live: the peers virtualenv and the folder holding ``tv_cpu_shim``.

Both are found relative to this file, never through absolute paths: the venv is ``$MEDMETA_PEERS_VENV``
(default ``<repo>/.venv-peers``, built by ``../shared/peers/setup-peers.sh``) and the shim folder is
``$MEDMETA_PEERS_SHIM`` (default ``<repo>/../shared/peers``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peers_venv() -> Path:
    """The peers virtualenv directory."""
    return Path(os.environ.get("MEDMETA_PEERS_VENV", REPO / ".venv-peers"))


def peers_python() -> Path:
    """The peers venv's python; exits with the fix when it is missing."""
    python = peers_venv() / "bin" / "python"
    if not python.exists():
        sys.exit(
            f"no peers venv at {peers_venv()}: build it with ../shared/peers/setup-peers.sh DIR "
            "or set MEDMETA_PEERS_VENV"
        )
    return python


def shim_dir() -> Path:
    """The folder with ``tv_cpu_shim.py`` (import it before learn2learn or easyfsl.methods)."""
    return Path(os.environ.get("MEDMETA_PEERS_SHIM", REPO.parent / "shared" / "peers"))


def import_shim() -> None:
    """Make torchvision importable on CPU torch (see ``tv_cpu_shim``); call before ``import learn2learn``."""
    sys.path.insert(0, str(shim_dir()))
    import tv_cpu_shim  # noqa: F401
