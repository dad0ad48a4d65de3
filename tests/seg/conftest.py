"""Real segmentation data at 32 px, loaded once per test session (skipped with a reason when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medmeta.seg.data import SegSource, load_source
from tests.conftest import shared_data_dir

SIZE = 32


@pytest.fixture(scope="session")
def seg_root() -> Path:
    root = shared_data_dir()
    if not (root / "segmentation").is_dir():
        pytest.skip(f"segmentation data not found at {root}: set MEDMETA_DATA to the shared data folder")
    return root


@pytest.fixture(scope="session")
def seg_sources(seg_root: Path) -> dict[str, SegSource]:
    """DRIVE, EM, CT and MR at 32 px."""
    return {name: load_source(name, seg_root, SIZE) for name in ("drive", "em", "ct", "mr")}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that read the real segmentation data carry the `data` marker (select with ``-m data``)."""
    for item in items:
        if "seg_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)
