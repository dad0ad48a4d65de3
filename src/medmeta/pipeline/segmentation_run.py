"""What ``medmeta seg train`` runs between its typed config and what it prints: the segmenter, its
structures, its training and validation episodes, its checkpoint description, and the test rows.

Kept beside `medmeta.pipeline.segmentation` (whose building blocks it composes) so that the CLI only
turns flags into a `SegConfig` and prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medmeta.config import SegConfig
from medmeta.errors import ConfigError
from medmeta.eval.segmentation import evaluate_segmenter
from medmeta.methods.segmentation.base import FewShotSegmenter
from medmeta.pipeline.segmentation import (
    CHECKPOINT_KIND,
    SegData,
    build_segmenter,
    load_seg_data,
    training_episodes,
)
from medmeta.tasks.base import SeededSampler
from medmeta.tasks.segmentation import SegEpisode, SegEpisodeSampler


@dataclass
class SegTraining:
    """A segmentation run ready to train: pass its parts to `train_segmenter`.

    Attributes:
        cfg: the run's config.
        model: the untrained segmenter.
        data: the training and test structures.
        episodes: training episodes (labelled, or superpixel pseudo-episodes for self-supervised methods).
        val_episodes: validation episodes of the training structures large enough for an episode
            (seeded ``train.seed + 1``), or None when none is.
        meta: what the checkpoint records (kind, method, config).
    """

    cfg: SegConfig
    model: FewShotSegmenter
    data: SegData
    episodes: SeededSampler[SegEpisode]
    val_episodes: SegEpisodeSampler | None
    meta: dict[str, Any]


def plan_seg_training(cfg: SegConfig) -> SegTraining:
    """Build the segmenter, load its structures and make its episodes; nothing is written.

    Raises:
        ConfigError: the method is a trivial baseline with nothing to train, or no training structure
            holds an episode.
    """
    model = build_segmenter(cfg)
    if model.training_source == "none":
        raise ConfigError(
            f"'{cfg.method.name}' is a trivial baseline with nothing to train: evaluate it with "
            f"`medmeta seg evaluate --model {cfg.method.name} --config ...`"
        )
    data = load_seg_data(cfg)
    episodes = training_episodes(model, data, cfg)
    e = cfg.episodes
    usable = {k: s for k, s in data.train.items() if len(s) >= e.n_shot + e.n_query}
    val = SegEpisodeSampler(usable, e.n_shot, e.n_query, cfg.train.seed + 1) if usable else None
    meta = {"kind": CHECKPOINT_KIND, "method": cfg.method.name, "config": cfg.model_dump(mode="json")}
    return SegTraining(cfg, model, data, episodes, val, meta)


def evaluate_seg_training(run: SegTraining) -> list[dict[str, Any]]:
    """Dice and HD95 rows of the (trained) segmenter on the run's test structures (``eval`` section)."""
    e = run.cfg.eval
    return evaluate_segmenter(
        run.model,
        run.data.test,
        e.shots,
        n_query=e.n_query,
        episodes=e.episodes,
        seed=e.seed,
        method=run.cfg.method.name,
    )
