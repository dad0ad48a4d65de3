"""What ``medmeta seg train`` / ``seg evaluate`` / ``segment`` run between their typed options and what they
print: the segmenter, its structures, its training and validation episodes, its checkpoint description,
the models to compare and the config they are compared under, and the test rows.

Kept beside `medmeta.pipeline.segmentation` (whose building blocks it composes) so that the CLI only
turns flags into a `SegConfig` and prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmeta.config import SegConfig, apply_overrides, load_seg_config, make_seg_config
from medmeta.errors import CheckpointError, ConfigError, MedmetaError
from medmeta.eval.segmentation import evaluate_segmenter
from medmeta.methods.segmentation.base import FewShotSegmenter
from medmeta.pipeline.checks import check_segmenter_config
from medmeta.pipeline.segmentation import (
    CHECKPOINT_KIND,
    SegData,
    build_segmenter,
    load_seg_data,
    load_segmenter,
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


def plan_seg_training(cfg: SegConfig, data: SegData | None = None) -> SegTraining:
    """Build the segmenter, load its structures (unless `data`, loaded from the same ``cfg.data``, is
    given) and make its episodes; nothing is written.

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
    data = load_seg_data(cfg) if data is None else data
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


def segmenter_or_baseline(model: str) -> tuple[FewShotSegmenter, SegConfig | None, str]:
    """A trivial baseline by name, or a trained segmenter from its checkpoint.

    Returns:
        The segmenter (eval mode), the config it was trained with (None for a baseline) and its method name.

    Raises:
        CheckpointError: `model` names a method that must be trained first, or a missing/invalid checkpoint.
    """
    from medmeta.methods.segmentation import SEG_METHODS

    cls = SEG_METHODS.get(model)
    if cls is not None and cls.training_source == "none":
        return cls().eval(), None, model
    if cls is not None and not Path(model).exists():
        raise CheckpointError(
            f"'{model}' is a segmentation method that must be trained first: run "
            f"`medmeta seg train --method {model} --out RUN`, then pass --model RUN/best.json"
        )
    segmenter, cfg, meta = load_segmenter(model)
    return segmenter, cfg, str(meta.get("method"))


def load_segmenters(models: Sequence[str]) -> tuple[dict[str, FewShotSegmenter], SegConfig | None]:
    """Segmenters to compare, by label (the method name; the path too when two share a name), and the
    config of the first checkpoint among them (None when all are baselines)."""
    loaded: dict[str, FewShotSegmenter] = {}
    first: SegConfig | None = None
    for model in dict.fromkeys(models):
        segmenter, cfg, label = segmenter_or_baseline(model)
        loaded[label if label not in loaded else f"{label} ({model})"] = segmenter
        first = first or cfg
    return loaded, first


def evaluation_config(
    checkpoint_cfg: SegConfig | None, config: Path | None, overrides: dict[str, Any]
) -> SegConfig:
    """The config a comparison runs under: `config` if given, else the first checkpoint's; then `overrides`.

    Raises:
        MedmetaError: neither is given (only baselines).
        ConfigError: an invalid config or override.
    """
    if config is not None:
        return check_segmenter_config(load_seg_config(config, overrides), source=str(config))
    if checkpoint_cfg is None and "data.test" in overrides:
        return check_segmenter_config(make_seg_config(apply_overrides({}, overrides)))
    if checkpoint_cfg is None:
        raise MedmetaError("only baselines given: pass --test or --config to say which structures to test on")
    merged = apply_overrides(checkpoint_cfg.model_dump(mode="json"), overrides)
    return check_segmenter_config(make_seg_config(merged))


def compare_segmenters(models: dict[str, FewShotSegmenter], cfg: SegConfig) -> list[dict[str, Any]]:
    """Dice and HD95 rows of every model on the same test episodes of `cfg` (its ``eval`` section).

    Raises:
        MedmetaError: the config has no test structure.
    """
    data = load_seg_data(cfg, with_train=False)
    if not data.test:
        raise MedmetaError("the config has no test structure: set data.test")
    e = cfg.eval
    rows: list[dict[str, Any]] = []
    for label, model in models.items():
        rows += evaluate_segmenter(
            model, data.test, e.shots, n_query=e.n_query, episodes=e.episodes, seed=e.seed, method=label
        )
    return rows
