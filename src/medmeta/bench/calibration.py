"""Calibrating a benchmark cell without touching its test episodes: one temperature per (trained model, shots),
fitted on episodes drawn from the *training* domains' validation images (`medmeta.eval.calibration`), and on
the same episodes the spread scale of methods with distance logits (`medmeta.eval.spread`).

The held-out domain's images are never used, so the calibrated ECE of a cell is an honest estimate of what a
user gets: a temperature learned where labels exist, applied to a domain where they do not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from medmeta.bench.evaluation import evaluate_with_logits
from medmeta.data.datasets import ImageDataset
from medmeta.eval.calibration import fit_pooled_temperature
from medmeta.methods.base import FewShotMethod
from medmeta.tasks.sampler import EpisodeSampler


def validation_samplers(
    val_sets: Sequence[ImageDataset], *, n_shot: int, n_query: int, episodes: int, seed: int
) -> list[EpisodeSampler]:
    """All-class `n_shot`-shot episodes, `episodes` in all, shared out over the validation sets whose every
    class can fill them (none when none can)."""
    usable = [v for v in val_sets if v.n_classes >= 2 and min(v.class_counts().values()) > n_shot]
    out = []
    for i, ds in enumerate(usable):
        count = episodes // len(usable) + (1 if i < episodes % len(usable) else 0)
        if count < 1:
            continue
        queries = min(n_query, min(ds.class_counts().values()) - n_shot)
        out.append(EpisodeSampler(ds, None, n_shot, queries, seed=seed + i, n_episodes=count))
    return out


def validation_temperature(
    method: FewShotMethod,
    samplers: Sequence[EpisodeSampler],
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
) -> float | None:
    """The temperature minimising the NLL of every episode of `samplers` (`validation_samplers`); None when
    there are none."""
    logits, targets = [], []
    for sampler in samplers:
        _, z, y = evaluate_with_logits(method, sampler, prepare=prepare, device=device)
        logits.append(z.reshape(-1, z.shape[-1]).cpu())  # (T * q, n_way)
        targets.append(y.reshape(-1).cpu())
    return fit_pooled_temperature(logits, targets) if logits else None
