"""What a continual run writes: the summary over seeds (mean and 95% CI), as CSV, JSON and a PNG plot.

Files (every one written atomically into the run's own folder):

- ``config.yaml``: the run's `ContinualConfig` (written before the first stage);
- ``continual.csv``: one row per shots x strategy x metric (x stage for the accuracy after each stage):
  ``shots, strategy, metric, stage, stage_name, classes_seen, mean, ci95, seeds``; fractions; ``ci95`` is the
  half-width of the 95% CI over seeds (`seed_ci`);
- ``continual.json``: the command, date, stream (stages, classes, image counts), summary rows and every
  run's class accuracy matrix, task matrix and scores;
- ``continual.png``: accuracy over the classes seen so far against the stage, one line per strategy with
  its 95% CI band, one panel per K.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medmeta.eval.metrics import mean_ci
from medmeta.outputs import write_text_atomic

if TYPE_CHECKING:
    from medmeta.pipeline.continual import ContinualResult

#: every file a continual run writes in its folder (the first is written first)
OUTPUT_FILES = ("config.yaml", "continual.csv", "continual.json", "continual.png")
#: those files, and the temporary files of an interrupted write
_NAMES = r"(?:config\.yaml|continual\.(?:csv|json|png))"
OWN_FILE = re.compile(rf"{_NAMES}|\.{_NAMES}(?:\.\d+)?\.tmp")
#: the end-of-stream scores, in report order
FINAL_METRICS = ("acc", "bwt", "forgetting")

MeanCI = tuple[float, float]


@dataclass(frozen=True)
class SummaryRow:
    """One strategy at one K over every seed: mean and 95% CI half-width of each score (fractions).

    Attributes:
        stage_accuracy: ``(mean, ci95)`` of the accuracy over the classes seen after each stage.
        final: ``acc``, ``bwt``, ``forgetting`` -> ``(mean, ci95)``.
    """

    shots: int
    strategy: str
    seeds: int
    stage_accuracy: tuple[MeanCI, ...]
    final: dict[str, MeanCI]


def seed_ci(values: list[float] | np.ndarray) -> MeanCI:
    """Mean and 95% CI half-width over seeds: Student's t with ``n - 1`` degrees of freedom (a handful of seeds
    is too few for the normal approximation of `mean_ci`: with 3 seeds the factor is 4.30, not 1.96)."""
    from scipy.stats import t as student

    n = len(values)
    return mean_ci(values, z=float(student.ppf(0.975, n - 1)) if n > 1 else 1.96)


def summarise(result: ContinualResult) -> list[SummaryRow]:
    """Rows in the order of ``data.shots`` then of the strategies."""
    rows = []
    for k in result.config.data.shots:
        for label in result.strategies:
            runs = [r for r in result.records if r.shots == k and r.strategy == label]
            if not runs:
                continue
            stages = np.stack([r.scores.stage_accuracy for r in runs])  # (seeds, T)
            final = {m: seed_ci([getattr(r.scores, m) for r in runs]) for m in FINAL_METRICS}
            per_stage = tuple(seed_ci(stages[:, t]) for t in range(stages.shape[1]))
            rows.append(SummaryRow(k, label, len(runs), per_stage, final))
    return rows


def _num(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.6f}"


def summary_csv(rows: list[SummaryRow], result: ContinualResult) -> str:
    """The rows as long-format CSV text (see the module docstring)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ["shots", "strategy", "metric", "stage", "stage_name", "classes_seen", "mean", "ci95", "seeds"]
    )
    stages = result.stream.stages
    last = len(stages)
    for r in rows:
        for t, (mean, ci) in enumerate(r.stage_accuracy):
            seen = result.stream.seen(t)
            writer.writerow(
                [r.shots, r.strategy, "accuracy", t + 1, stages[t].spec, seen, _num(mean), _num(ci), r.seeds]
            )
        for m in FINAL_METRICS:
            mean, ci = r.final[m]
            writer.writerow(
                [
                    r.shots,
                    r.strategy,
                    m,
                    last,
                    stages[-1].spec,
                    result.stream.n_classes,
                    _num(mean),
                    _num(ci),
                    r.seeds,
                ]
            )
    return buf.getvalue()


def _clean(x: Any) -> Any:
    """JSON-ready: NaN -> None, tuples -> lists."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def summary_json(rows: list[SummaryRow], result: ContinualResult, meta: dict[str, Any]) -> str:
    """Everything about the run as JSON text (see the module docstring)."""
    stream = [
        {
            "stage": t + 1,
            "spec": s.spec,
            "dataset": s.domain,
            "classes": list(s.class_names),
            "train_images": s.train.class_counts(),
            "test_images": s.test.class_counts(),
            "test_source": s.test_source,
        }
        for t, s in enumerate(result.stream.stages)
    ]
    payload = {
        **meta,
        "seconds": round(result.seconds, 1),
        "config": result.config.model_dump(mode="json"),
        "stream": stream,
        "summary": [
            {
                "shots": r.shots,
                "strategy": r.strategy,
                "seeds": r.seeds,
                "stage_accuracy": [{"mean": m, "ci95": c} for m, c in r.stage_accuracy],
                **{m: {"mean": r.final[m][0], "ci95": r.final[m][1]} for m in FINAL_METRICS},
            }
            for r in rows
        ],
        "runs": [r.to_dict() for r in result.records],
    }
    return json.dumps(_clean(payload), indent=2)


def accuracy_plot(rows: list[SummaryRow], result: ContinualResult) -> bytes:
    """PNG: accuracy % over the classes seen so far against the stage; a line and a 95% CI band per strategy,
    a panel per K (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = list(dict.fromkeys(r.shots for r in rows))
    fig, axes = plt.subplots(1, len(shots), figsize=(5.0 * len(shots), 3.8), squeeze=False)
    stages = result.stream.stages
    x = np.arange(1, len(stages) + 1)
    ticks = [f"{t + 1}: {s.domain}\n({result.stream.seen(t)} classes)" for t, s in enumerate(stages)]
    for ax, k in zip(axes[0], shots, strict=True):
        for r in (r for r in rows if r.shots == k):
            mean = np.array([100 * m for m, _ in r.stage_accuracy])
            ci = np.array([100 * c for _, c in r.stage_accuracy])
            (line,) = ax.plot(x, mean, marker="o", label=r.strategy)
            ax.fill_between(x, mean - ci, mean + ci, color=line.get_color(), alpha=0.15)
        ax.set_xticks(x, ticks, fontsize=7)
        ax.set_ylim(0, 100)
        seeds = rows[0].seeds
        ax.set_title(
            f"K = {k} shots, mean and 95% CI over {seeds} seed{'s' if seeds != 1 else ''}", fontsize=9
        )
        ax.set_xlabel("stage")
        ax.set_ylabel("accuracy % over the classes seen so far")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _write_bytes_atomic(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def write_report(out: Path, result: ContinualResult, meta: dict[str, Any]) -> list[Path]:
    """Write ``continual.csv``, ``continual.json`` and ``continual.png`` into `out`; returns their paths."""
    rows = summarise(result)
    return [
        write_text_atomic(out / "continual.csv", summary_csv(rows, result)),
        write_text_atomic(out / "continual.json", summary_json(rows, result, meta)),
        _write_bytes_atomic(out / "continual.png", accuracy_plot(rows, result)),
    ]
