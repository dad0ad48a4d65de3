"""Evaluation on seeded episodes: Dice and HD95 per held-out structure, mean and 95% CI over episodes.

Every method sees the same episodes (episode ``i`` of a structure depends only on the seed and ``i``). An
episode's score is the mean over its query images; the CI is over episodes. Adaptation time is the wall
time of ``adapt`` (support forward, inner loop or fine-tuning) per episode.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from medmeta.data.segmentation.sources import SegStructure
from medmeta.eval.mask_metrics import dice, hd95, summarize
from medmeta.methods.segmentation.base import FewShotSegmenter
from medmeta.tasks.segmentation import EpisodeSource, SegEpisodeSampler


def evaluate_structure_episodes(
    model: FewShotSegmenter, episodes: EpisodeSource, n_episodes: int, device: torch.device | str = "cpu"
) -> dict[str, list[float]]:
    """Per-episode ``dice``, ``hd95`` (NaN when undefined for every query) and ``adapt_seconds``."""
    was_training = model.training
    model.eval()
    out: dict[str, list[float]] = {"dice": [], "hd95": [], "adapt_seconds": []}
    try:
        with torch.no_grad():
            for i in range(n_episodes):
                ep = episodes(i).to(device)
                assert ep.query_masks is not None  # evaluation episodes always carry masks
                t0 = time.perf_counter()
                predictor = model.adapt(ep.support)
                out["adapt_seconds"].append(time.perf_counter() - t0)
                pred = predictor.predict(ep.query_images).argmax(1) == 1  # (N, H, W)
                out["dice"].append(float(dice(pred, ep.query_masks).mean()))
                hd = hd95(pred, ep.query_masks).numpy()
                out["hd95"].append(float(np.nanmean(hd)) if np.isfinite(hd).any() else math.nan)
    finally:
        model.train(was_training)
    return out


class DiceValidation:
    """Validation of segmentation training (a `medmeta.train.loop.Validation`): mean Dice.

    The record gains ``val_dice``, the mean Dice over episodes ``0 .. episodes - 1`` of `sampler`; with no
    sampler or no episode it records nothing, and the training keeps its last epoch.
    """

    metric = "val_dice"

    def __init__(self, sampler: EpisodeSource | None, episodes: int) -> None:
        self.sampler, self.episodes = sampler, episodes

    def __call__(self, method: FewShotSegmenter, device: torch.device) -> dict[str, float]:
        if self.sampler is None or self.episodes <= 0:
            return {}
        dices = evaluate_structure_episodes(method, self.sampler, self.episodes, device)["dice"]
        return {"val_dice": float(sum(dices) / len(dices))}


def evaluate_segmenter(
    model: FewShotSegmenter,
    structures: Mapping[str, SegStructure],
    shots: Sequence[int],
    *,
    n_query: int,
    episodes: int,
    seed: int,
    method: str,
    device: torch.device | str = "cpu",
) -> list[dict[str, Any]]:
    """One row per (structure, shots): Dice and HD95 mean, 95% CI, and mean adaptation time.

    Structures with fewer than ``shots + n_query`` samples are skipped for that shot count (the row says
    so with ``episodes = 0``).
    """
    rows: list[dict[str, Any]] = []
    for name in sorted(structures):
        for k in shots:
            row: dict[str, Any] = {"method": method, "structure": name, "n_shot": k, "n_query": n_query}
            if len(structures[name]) < k + n_query:
                rows.append({**row, "episodes": 0, "note": f"only {len(structures[name])} samples"})
                continue
            sampler = SegEpisodeSampler({name: structures[name]}, k, n_query, seed)
            res = evaluate_structure_episodes(model, sampler, episodes, device)
            d, h = summarize(res["dice"]), summarize(res["hd95"])
            rows.append(
                {
                    **row,
                    "episodes": episodes,
                    "dice": d["mean"],
                    "dice_ci95": d["ci95"],
                    "hd95": h["mean"],
                    "hd95_ci95": h["ci95"],
                    "hd95_undefined": h["n_undefined"],
                    "adapt_seconds": float(np.mean(res["adapt_seconds"])),
                }
            )
    return rows


def results_markdown(rows: Sequence[Mapping[str, Any]], metric: str = "dice") -> str:
    """A Markdown table: one line per (method, shots), one column per structure, plus adapt time.

    Args:
        rows: `evaluate_segmenter` rows.
        metric: ``dice`` (shown in %) or ``hd95`` (pixels), each as mean ± 95% CI half-width.
    """
    if metric not in ("dice", "hd95"):
        raise ValueError(f"metric must be dice or hd95, got '{metric}'")
    factor = 100.0 if metric == "dice" else 1.0
    structures = sorted({str(r["structure"]) for r in rows})
    keys = list(dict.fromkeys((str(r["method"]), int(r["n_shot"])) for r in rows))
    head = "| method | shots | " + " | ".join(structures) + " | adapt s/episode |"
    lines = [head, "|" + "---|" * (len(structures) + 3)]
    for method, k in keys:
        cells, times = [], []
        for s in structures:
            r = next(
                (r for r in rows if r["method"] == method and r["n_shot"] == k and r["structure"] == s), None
            )
            if r is None or not r.get("episodes"):
                cells.append("n/a")
                continue
            cells.append(f"{factor * r[metric]:.1f} ± {factor * r[metric + '_ci95']:.1f}")
            times.append(float(r["adapt_seconds"]))
        t = f"{np.mean(times):.3f}" if times else "n/a"
        lines.append(f"| {method} | {k} | " + " | ".join(cells) + f" | {t} |")
    return "\n".join(lines)
