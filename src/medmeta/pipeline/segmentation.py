"""From a `SegConfig` to data, a segmenter, training episodes; and back from a checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from medmeta.config import SegConfig, TrainConfig, make_seg_config
from medmeta.data.root import data_root
from medmeta.data.segmentation.sources import (
    SegSource,
    SegStructure,
    load_source,
    parse_spec,
    select_structures,
)
from medmeta.errors import CheckpointError, ConfigError
from medmeta.eval.segmentation import DiceValidation
from medmeta.methods.segmentation.base import FewShotSegmenter
from medmeta.pipeline.checks import check_segmenter_config
from medmeta.tasks.base import SeededSampler
from medmeta.tasks.segmentation import EpisodeSource, SegEpisode, SegEpisodeSampler
from medmeta.tasks.superpixels import SuperpixelEpisodes
from medmeta.train.checkpoint import load_checkpoint, load_state_strictly
from medmeta.train.loop import FitResult, ProgressHook, fit
from medmeta.train.sources import EpisodicBatches

CHECKPOINT_KIND = "medmeta-segmenter"


@dataclass
class SegData:
    """The loaded sources and the protocol's disjoint training and test structures."""

    sources: dict[str, SegSource]
    train: dict[str, SegStructure]
    test: dict[str, SegStructure]


def load_seg_data(cfg: SegConfig, *, with_train: bool = True) -> SegData:
    """Load the sources named by the config and split structures into training and test sets.

    Training structures never include a test structure (``ct`` in ``train`` means every CT structure not
    in ``test``).
    """
    d = cfg.data
    specs = [*(d.train if with_train else []), *d.test]
    root = data_root(d.data_dir)
    sources = {}
    for name in dict.fromkeys(parse_spec(s)[0] for s in specs):
        sources[name] = load_source(name, root, d.image_size, min_pixels=d.min_pixels, tiles=d.tiles)
    test = select_structures(sources, list(d.test)) if d.test else {}
    train = select_structures(sources, list(d.train), exclude=set(test)) if with_train else {}
    return SegData(sources, train, test)


def ssl_pool(data: SegData, cfg: SegConfig) -> tuple[Tensor, Tensor | None]:
    """Unlabelled images of the training sources ``(N, 1, S, S)`` and masks of the test structures on
    them ``(N, S, S)`` (to keep test organs out of pseudo-labels), or None when not excluding."""
    names = list(dict.fromkeys(parse_spec(s)[0] for s in cfg.data.train))
    images, excludes = [], []
    for name in names:
        src = data.sources[name]
        images.append(src.images)
        ex = torch.zeros(src.images.shape[0], *src.images.shape[2:])  # (n_pool, S, S)
        for s in data.test.values():
            if s.name.startswith(f"{name}:"):
                ex[list(s.pool_index)] = torch.maximum(ex[list(s.pool_index)], s.masks)
        excludes.append(ex)
    return torch.cat(images), (torch.cat(excludes) if cfg.data.exclude_test_from_ssl else None)


def build_segmenter(cfg: SegConfig) -> FewShotSegmenter:
    """A fresh segmenter, its weights seeded by ``train.seed``."""
    from medmeta.methods.segmentation import SEG_METHODS

    check_segmenter_config(cfg)
    torch.manual_seed(cfg.train.seed)
    return SEG_METHODS[cfg.method.name].from_options(cfg.method.options)


def training_episodes(method: FewShotSegmenter, data: SegData, cfg: SegConfig) -> SeededSampler[SegEpisode]:
    """Training episodes for `method`: labelled episodes of the training structures, or superpixel
    pseudo-episodes of their (unlabelled) images for self-supervised methods."""
    e = cfg.episodes
    if method.training_source == "superpixels":
        images, exclude = ssl_pool(data, cfg)
        return SuperpixelEpisodes(images, e.n_shot, e.n_query, cfg.train.seed, exclude=exclude)
    usable = {k: s for k, s in data.train.items() if len(s) >= e.n_shot + e.n_query}
    if not usable:
        raise ConfigError(
            f"no training structure has n_shot + n_query = {e.n_shot + e.n_query} samples: lower them or "
            "data.min_pixels"
        )
    return SegEpisodeSampler(usable, e.n_shot, e.n_query, cfg.train.seed)


def train_segmenter(
    model: FewShotSegmenter,
    episodes: SeededSampler[SegEpisode],
    cfg: TrainConfig,
    *,
    val_episodes: EpisodeSource | None = None,
    out_dir: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    progress: ProgressHook | None = None,
    resume: bool = False,
    on_start: Callable[[], None] | None = None,
) -> FitResult:
    """Train `model` on `episodes` with the one training loop (`medmeta.train.loop.fit`).

    Meta-batches of ``cfg.meta_batch`` episodes, the whole of `cfg` (LR schedule, AMP, clipping, resume),
    ``cfg.val_episodes`` validation episodes of `val_episodes` scored by Dice (the best epoch is kept and
    saved as ``out_dir/best``; no ``last`` checkpoint). The model ends in eval mode.
    """
    validation = None if val_episodes is None else DiceValidation(val_episodes, cfg.val_episodes)
    result = fit(
        model,
        EpisodicBatches(episodes, cfg),
        cfg,
        validation=validation,
        out_dir=out_dir,
        meta=meta,
        progress=progress,
        resume=resume,
        save_last=False,
        on_start=on_start,
    )
    model.eval()
    return result


def load_segmenter(path: str | Path) -> tuple[FewShotSegmenter, SegConfig, dict[str, Any]]:
    """Rebuild a trained segmenter (eval mode) from a checkpoint written by `medmeta seg train`."""
    state, meta = load_checkpoint(path)
    if meta.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(
            f"{path} is not a segmentation checkpoint (kind {meta.get('kind')!r}): use one written by "
            "`medmeta seg train`"
        )
    try:
        cfg = check_segmenter_config(make_seg_config(meta["config"], source=f"config stored in {path}"))
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(
            f"segmentation checkpoint {path} lacks a usable config ({exc}): retrain"
        ) from None
    model = build_segmenter(cfg)
    load_state_strictly(model, state, f"segmentation checkpoint {path} ({cfg.method.name})")
    return model.eval(), cfg, meta
