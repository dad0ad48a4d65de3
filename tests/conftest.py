"""Fixtures for every test: one torch thread, a synthetic episode, the real data root (skipped with a
reason when absent) and a tiny trained checkpoint. Helpers live in `tests._helpers`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from medmeta.tasks.episode import Episode
from tests._helpers.deploy import tiny_checkpoint  # noqa: F401  (session fixture, trained once)
from tests._helpers.episodes import make_episode
from tests._helpers.paths import shared_data_dir

if TYPE_CHECKING:
    from medmeta.data.segmentation.sources import SegSource


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """Tests use one intra-op thread: the tensors are small, and two threads on a busy 2-core machine
    spend most of their time waiting for each other (measured: 93 s vs 3.5 s for a small training run)."""
    torch.set_num_threads(1)


@pytest.fixture
def data_dir() -> Path:
    """The real data root; the test is skipped (with the reason) when it is absent."""
    root = shared_data_dir()
    if not (root / "classification").is_dir():
        pytest.skip(f"real data not found at {root}: set MEDMETA_DATA to the shared data folder")
    return root


@pytest.fixture(scope="session")
def seg_root() -> Path:
    """The real data root holding ``segmentation/``; the test is skipped (with the reason) when absent."""
    root = shared_data_dir()
    if not (root / "segmentation").is_dir():
        pytest.skip(f"segmentation data not found at {root}: set MEDMETA_DATA to the shared data folder")
    return root


@pytest.fixture(scope="session")
def seg_sources(seg_root: Path) -> dict[str, SegSource]:
    """DRIVE, EM, CT and MR segmentation sources at 32 px, loaded once per test session."""
    from medmeta.data.segmentation.sources import load_source

    return {name: load_source(name, seg_root, 32) for name in ("drive", "em", "ct", "mr")}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that read the real segmentation data carry the `data` marker (select with ``-m data``)."""
    for item in items:
        if "seg_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)


@pytest.fixture
def episode() -> Episode:
    return make_episode()
