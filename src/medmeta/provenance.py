"""Which code produced a result: medmeta's version, and the git commit when run from a checkout.

Benchmark records carry it (``code``), so a run resumed across code changes says which cells came from
which code. ``"0.1.0+git.046a899"``; ``".dirty"`` is appended when tracked files under ``src/`` differ
from that commit; just the version outside a git checkout (an installed wheel).
"""

from __future__ import annotations

import datetime
import functools
import subprocess
from pathlib import Path
from typing import Any

from medmeta import __version__

_REPO = Path(__file__).resolve().parents[2]  # <repo>/src/medmeta/provenance.py -> <repo>


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(_REPO), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@functools.cache
def code_version() -> str:
    """``VERSION[+git.COMMIT[.dirty]]`` of the running medmeta (computed once per process)."""
    if not (_REPO / ".git").exists() or not (_REPO / "src" / "medmeta").is_dir():
        return __version__
    commit = _git("rev-parse", "--short", "HEAD")
    if not commit:
        return __version__
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", "src")
    return f"{__version__}+git.{commit}" + (".dirty" if changed else "")


def run_stamp(command: str) -> dict[str, Any]:
    """What a run report records about how it was made: the `command`, the UTC start time, medmeta's
    version, the code (`code_version`) and torch's version."""
    import torch

    return {
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "medmeta_version": __version__,
        "code": code_version(),
        "torch_version": torch.__version__,
    }
