"""From result records to the summary table: seeds pooled, 95% CIs, best and tied methods marked.

A row is one (method, held-out domain, shots): the per-episode values of every seed are pooled and
each metric is their mean with the normal-approximation 95% CI (`medmeta.eval.metrics.mean_ci`). In a
column (domain, shots, metric) the method with the best mean is marked ``best``; a method whose CI
overlaps the best one's is marked ``tie`` (the data cannot tell them apart). Higher is better for every
metric except ECE. The fully-supervised reference gets one row per domain (shots ``all``; its
``n_query`` column holds the number of test images and ``episodes`` is 0) and, when its features were
tested in the few-shot episodes, one row per shots (``REFERENCE_FEATURES``): both are ceilings for reading
the methods, never marked best.

The episode CI says how sure the mean is for these trained models; it does not include the variation
between training seeds. Each row therefore also keeps every seed's own mean accuracy, and the CSV its
standard deviation over seeds (``accuracy_seed_sd``).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmeta.bench.evaluation import METRICS
from medmeta.bench.protocol import Protocol
from medmeta.eval.metrics import mean_ci

LOWER_IS_BETTER = frozenset({"ece", "ece_calibrated", "ece_loo", "ece_loo_spread"})
REFERENCE = "supervised reference"
#: The reference's features in the methods' own few-shot episodes (trained with every label of the domain).
REFERENCE_FEATURES = "supervised reference features"
#: Rows that are ceilings, not competitors: left out of the best/tie marks and of "the best method".
REFERENCES = frozenset({REFERENCE, REFERENCE_FEATURES})


@dataclass
class Row:
    """One line of the summary: ``metrics[name] = (mean, ci95)`` and ``marks[name]`` in best/tie/''.

    ``seed_accuracy`` maps each seed to its own mean accuracy (seed order). ``episode_spread`` is the
    standard deviation, 10th and 90th percentile of the per-episode accuracies (every episode draws a new
    support set: how much the answer moves with the handful of labelled images).
    """

    method: str
    domain: str
    shots: int | str
    n_way: int
    n_query: int
    seeds: int
    episodes: int
    metrics: dict[str, tuple[float, float]]
    marks: dict[str, str] = field(default_factory=dict)
    seed_accuracy: dict[int, float] = field(default_factory=dict)
    episode_spread: tuple[float, float, float] = (math.nan, math.nan, math.nan)

    @property
    def seed_sd(self) -> float:
        """Sample standard deviation of the seeds' mean accuracies (NaN with fewer than 2 seeds)."""
        if len(self.seed_accuracy) < 2:
            return math.nan
        return float(np.std(list(self.seed_accuracy.values()), ddof=1))


def _pooled(records: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    out = {}
    for m in METRICS:  # a metric added after a record was written counts as missing (NaN) there
        v = np.concatenate(
            [
                np.asarray(r["per_episode"].get(m, [math.nan] * int(r["episodes"])), dtype=np.float64)
                for r in records
            ]
        )
        finite = v[np.isfinite(v)]
        out[m] = mean_ci(finite) if len(finite) else (math.nan, math.nan)
    return out


def _seed_mean(record: dict[str, Any]) -> float:
    v = np.asarray(record["per_episode"]["accuracy"], dtype=np.float64)
    return float(np.mean(v))


def _episode_spread(records: list[dict[str, Any]]) -> tuple[float, float, float]:
    v = np.concatenate([np.asarray(r["per_episode"]["accuracy"], dtype=np.float64) for r in records])
    if len(v) < 2:
        return math.nan, math.nan, math.nan
    return float(np.std(v, ddof=1)), float(np.percentile(v, 10)), float(np.percentile(v, 90))


def reference_row(domain: str, records: list[dict[str, Any]]) -> Row:
    """The reference of one domain over seeds: accuracy CI over all test predictions, others averaged."""
    correct = np.concatenate([np.asarray(r["per_image_correct"], dtype=np.float64) for r in records])
    metrics = {
        m: (float(np.mean([r["metrics"].get(m, {"mean": math.nan})["mean"] for r in records])), math.nan)
        for m in METRICS
    }
    metrics["accuracy"] = mean_ci(correct)
    per_seed = {int(r["seed"]): float(np.mean(r["per_image_correct"])) for r in records}
    return Row(
        method=REFERENCE,
        domain=domain,
        shots="all",
        n_way=len(records[0]["classes"]),
        n_query=int(records[0]["n_test"]),
        seeds=len(records),
        episodes=0,
        metrics=metrics,
        seed_accuracy=per_seed,
    )


def pooled_row(method: str, domain: str, shots: int, records: list[dict[str, Any]]) -> Row:
    """A row of few-shot results pooled over seeds: `records` are one per seed, each with ``seed``,
    ``n_way``, ``n_query``, ``episodes`` and ``per_episode`` (a method's cells, or the ``few_shot`` items of
    the reference's records)."""
    return Row(
        method=method,
        domain=domain,
        shots=shots,
        n_way=int(records[0]["n_way"]),
        n_query=int(records[0]["n_query"]),
        seeds=len(records),
        episodes=sum(int(r["episodes"]) for r in records),
        metrics=_pooled(records),
        seed_accuracy={int(r["seed"]): _seed_mean(r) for r in records},
        episode_spread=_episode_spread(records),
    )


def mark_column(rows: list[Row], metric: str) -> None:
    """Mark the best row of `metric` and the rows whose 95% CI overlaps it."""
    scored = [r for r in rows if math.isfinite(r.metrics[metric][0])]
    if not scored:
        return
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    best = max(scored, key=lambda r: sign * r.metrics[metric][0])
    b_mean, b_ci = best.metrics[metric]
    for r in scored:
        mean, ci = r.metrics[metric]
        if r is best:
            r.marks[metric] = "best"
        elif abs(mean - b_mean) <= (ci if math.isfinite(ci) else 0.0) + (
            b_ci if math.isfinite(b_ci) else 0.0
        ):
            r.marks[metric] = "tie"


def summarize(protocol: Protocol, records: list[dict[str, Any]]) -> list[Row]:
    """Summary rows in protocol order (methods, then the reference, per domain and shots)."""
    cells: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    refs: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("kind") == "cell":
            cells.setdefault((r["method"], r["domain"], int(r["shots"])), []).append(r)
        elif r.get("kind") == "reference":
            refs.setdefault(r["domain"], []).append(r)
    rows: list[Row] = []
    for domain in protocol.held_out_domains:
        for k in protocol.eval.shots:
            column = []
            for m in protocol.all_methods:
                found = sorted(cells.get((m.label, domain, k), []), key=lambda r: r["seed"])
                found = list({r["seed"]: r for r in found}.values())  # one record per seed
                if not found:
                    continue
                column.append(pooled_row(m.label, domain, k, found))
            for metric in METRICS:
                mark_column(column, metric)
            rows.extend(column)
            features = [
                {**f, "seed": r["seed"]}
                for r in _one_per_seed(refs.get(domain, []))
                for f in r.get("few_shot", [])
                if int(f["shots"]) == k
            ]
            if features:
                rows.append(pooled_row(REFERENCE_FEATURES, domain, k, features))
        if domain in refs:
            rows.append(reference_row(domain, _one_per_seed(refs[domain])))
    return rows


def _one_per_seed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last record of each seed, in seed order."""
    return list({r["seed"]: r for r in sorted(records, key=lambda r: r["seed"])}.values())


def _num(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.6f}"


def summary_csv(rows: list[Row]) -> str:
    """The rows as CSV text: identity columns, then ``METRIC``, ``METRIC_ci95``, ``METRIC_mark``, then
    ``accuracy_seed_sd`` (empty with one seed) and the spread over support draws (per-episode accuracy:
    ``accuracy_episode_sd``, ``accuracy_p10``, ``accuracy_p90``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["method", "domain", "shots", "n_way", "n_query", "seeds", "episodes"]
    for m in METRICS:
        header += [m, f"{m}_ci95", f"{m}_mark"]
    writer.writerow([*header, "accuracy_seed_sd", "accuracy_episode_sd", "accuracy_p10", "accuracy_p90"])
    for r in rows:
        line: list[Any] = [r.method, r.domain, r.shots, r.n_way, r.n_query, r.seeds, r.episodes]
        for m in METRICS:
            mean, ci = r.metrics[m]
            line += [_num(mean), _num(ci), r.marks.get(m, "")]
        writer.writerow([*line, _num(r.seed_sd), *(_num(x) for x in r.episode_spread)])
    return buf.getvalue()


def write_summary(rows: list[Row], out: str | Path) -> Path:
    """Write ``OUT/summary.csv`` atomically."""
    path = Path(out) / "summary.csv"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(summary_csv(rows))
    tmp.replace(path)
    return path
