"""Meta-train a method for a few episodes on real blood-cell images and evaluate it on unseen classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medmeta.config import make_config
from medmeta.eval.evaluate import EvalResult
from medmeta.pipeline import default_normalization, evaluate_on_tests, train_method

TRAIN_CLASSES = "basophil,eosinophil,erythroblast,ig,lymphocyte"
TEST_CLASSES = "monocyte,neutrophil,platelet"


def train_and_test_on_blood_cells(
    data_dir: Path,
    method: str,
    options: dict[str, Any] | None = None,
    *,
    episodes: int = 10,
    lr: float = 1e-3,
) -> EvalResult:
    """3-way 5-shot: meta-train on 5 blood-cell classes (28x28), test on the 3 others (60 episodes)."""
    cfg = make_config(
        {
            "data": {
                "train": [f"blood_pbc:{TRAIN_CLASSES}"],
                "test": [f"blood_pbc:{TEST_CLASSES}"],
                "image_size": 28,
                "data_dir": str(data_dir),
            },
            "episodes": {"n_way": 3, "n_shot": 5, "n_query": 5},
            "method": {"name": method, "options": options or {}},
            "train": {
                "epochs": 1,
                "episodes_per_epoch": episodes,
                "lr": lr,
                "val_episodes": 0,
                "device": "cpu",
            },
            "eval": {"episodes": 60, "n_way": 3, "n_shot": 5, "n_query": 10},
        }
    )
    trained, _, data = train_method(cfg)
    (result,) = evaluate_on_tests(trained, cfg, data.test, normalization=default_normalization(3))
    return result


def assert_above_chance(result: EvalResult, n_way: int = 3, margin: float = 0.15) -> None:
    """Mean accuracy at least `margin` above chance and the whole 95% CI above chance."""
    chance = 1.0 / n_way
    assert result.accuracy > chance + margin, result.summary()
    assert result.accuracy - result.ci95 > chance, result.summary()
    assert 0.0 <= result.metrics["ece"][0] <= 1.0
    assert result.metrics["auc"][0] > 0.5
