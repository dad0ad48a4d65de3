"""Shared by the transfer-baseline tests: tiny synthetic domains, a flat backbone and real-data runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from medmeta.config import RunConfig, make_config
from medmeta.data.datasets import ImageDataset
from medmeta.eval.evaluate import EvalResult
from medmeta.methods.base import FewShotMethod
from medmeta.pipeline import default_normalization, evaluate_on_tests, train_method

#: Blood-cell classes the real-data tests pretrain on; the other three are the unseen test classes.
TRAIN_CLASSES = "basophil,eosinophil,erythroblast,ig,lymphocyte"
TEST_CLASSES = "monocyte,neutrophil,platelet"


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Run a test on one torch thread, then restore the count (imported by each baseline test module).

    These tests run thousands of tiny ops (per-task optimisers); on a shared 2-core machine, intra-op
    threads make them ten times slower. The pipeline's ``train.threads`` would change the count for good.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Flat(nn.Module):
    """Identity backbone: an image ``(n, d, 1, 1)`` is its own feature ``(n, d)``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.out_features = d

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def as_images(features: Tensor) -> Tensor:
    """Features ``(n, d)`` as images ``(n, d, 1, 1)`` for `Flat`."""
    return features[:, :, None, None]


def toy_domain(
    n_classes: int, n_per_class: int = 12, size: int = 16, seed: int = 0, name: str = "toy"
) -> ImageDataset:
    """uint8 images ``(n, 3, size, size)`` whose classes differ in brightness and colour."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    base = 40 + 160 * labels / max(1, n_classes - 1)
    images = base[:, None, None, None] + rng.normal(0, 12, (len(labels), 3, size, size))
    images[np.arange(len(labels)), labels % 3] += 25
    return ImageDataset(
        images=np.clip(images, 0, 255).astype(np.uint8),
        labels=labels.astype(np.int64),
        class_names=tuple(f"c{i}" for i in range(n_classes)),
        domain=name,
    )


def real_config(
    data_dir: Path, method: str, options: dict[str, Any] | None = None, **train: Any
) -> RunConfig:
    """A seconds-long run on the real blood-cell images: pretrain on 5 classes, test 3-way on the others."""
    return make_config(
        {
            "data": {
                "train": [f"blood_pbc:{TRAIN_CLASSES}"],
                "test": [f"blood_pbc:{TEST_CLASSES}"],
                "image_size": 32,
                "data_dir": str(data_dir),
            },
            "episodes": {"n_way": 3, "n_shot": 5, "n_query": 5},
            "method": {"name": method, "options": {"batch_size": 32, "mean_images": 256, **(options or {})}},
            "train": {"epochs": 1, "episodes_per_epoch": 25, "val_episodes": 10, "device": "cpu", **train},
            "eval": {"episodes": 40, "n_way": 3, "n_shot": 5, "n_query": 10},
        }
    )


def train_and_test(cfg: RunConfig, out_dir: Path | None = None) -> tuple[FewShotMethod, list[EvalResult]]:
    """`train_method` then `evaluate_on_tests`, as the CLI does."""
    method, _, data = train_method(cfg, out_dir=out_dir)
    results = evaluate_on_tests(method, cfg, data.test, normalization=default_normalization(3))
    return method, results


def assert_above_chance(result: EvalResult, n_way: int) -> None:
    """Mean accuracy clearly above chance: the 95% CI's lower end exceeds ``1 / n_way`` by 10 points."""
    assert result.accuracy - result.ci95 > 1 / n_way + 0.10, result.summary()


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
