"""Where the repository and the real data are (the data root is ``$MEDMETA_DATA``, else ``../shared/data``)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """``$MEDMETA_DATA``, else ``../shared/data`` beside the repo."""
    env = os.environ.get("MEDMETA_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"
