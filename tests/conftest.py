"""Shared fixtures: synthetic episodes, and the real data root (skipped with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from medmeta.tasks.episode import Episode
from tests.deploy.fixtures import tiny_checkpoint  # noqa: F401  (session fixture, trained once)

if TYPE_CHECKING:
    from medmeta.data.segmentation.sources import SegSource

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """Tests use one intra-op thread: the tensors are small, and two threads on a busy 2-core machine
    spend most of their time waiting for each other (measured: 93 s vs 3.5 s for a small training run)."""
    torch.set_num_threads(1)


def shared_data_dir() -> Path:
    """``$MEDMETA_DATA``, else ``../shared/data`` beside the repo."""
    env = os.environ.get("MEDMETA_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


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


def make_episode(
    n_way: int = 3,
    n_shot: int = 2,
    n_query: int = 3,
    shape: tuple[int, ...] = (3, 16, 16),
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Episode:
    """A random float episode whose classes differ in mean intensity (so methods can learn them)."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.linspace(-1, 1, n_way)

    def images(n_per: int) -> torch.Tensor:
        x = torch.randn(n_way * n_per, *shape, generator=g, dtype=dtype)
        return x + offsets.repeat_interleave(n_per).view(-1, *([1] * len(shape))).to(dtype)

    return Episode(
        support_images=images(n_shot),
        support_labels=torch.arange(n_way).repeat_interleave(n_shot),
        query_images=images(n_query),
        query_labels=torch.arange(n_way).repeat_interleave(n_query),
        class_ids=torch.arange(n_way),
    )


@pytest.fixture
def episode() -> Episode:
    return make_episode()
