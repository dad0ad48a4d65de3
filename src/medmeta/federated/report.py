"""What a federated run writes: one table per K, a row per strategy or reference, a column per site.

Files (each written atomically into the run's own folder, rewritten after every finished row):

- ``federated.md``: the tables in Markdown, accuracy % as mean ± 95% CI half-width over the site's test
  episodes (`mean_ci`), the mean over sites, and epsilon per site for DP rows;
- ``federated.csv``: one line per row x site x K: ``row, kind, learner, site, shots, accuracy, ci95,
  episodes, epsilon`` (fractions);
- ``federated.json``: the command, date, config, sites and every row's per-episode accuracies and
  training losses.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from medmeta.eval.metrics import mean_ci
from medmeta.outputs import write_text_atomic

#: every file a federated run writes in its folder (config.yaml first); `.work` holds the engines' files
OUTPUT_FILES = ("config.yaml", "federated.md", "federated.csv", "federated.json")
_NAMES = r"(?:config\.yaml|federated\.(?:md|csv|json))"
OWN_FILE = re.compile(rf"{_NAMES}|\.{_NAMES}(?:\.\d+)?\.tmp|\.work")


def kind_of(row: dict[str, Any]) -> str:
    label = str(row["strategy"])
    return label.split("/", 1)[0] if "/" in label else "federated"


def _pct(mean: float, ci: float) -> str:
    return "n/a" if not math.isfinite(mean) else f"{100 * mean:.1f} ± {100 * ci:.1f}"


def markdown(rows: list[dict[str, Any]], sites: list[str], shots: list[int]) -> str:
    """The Markdown tables (one per K)."""
    out = []
    for k in shots:
        out.append(
            f"### K = {k} shots: accuracy % at each site after local adaptation (mean ± 95% CI over episodes)\n"
        )
        out.append("| row | " + " | ".join(sites) + " | mean over sites | ε per site |")
        out.append("|---|" + "---:|" * (len(sites) + 1) + "---|")
        for row in rows:
            cells, means = [], []
            for s in sites:
                acc = row["sites"].get(s, {}).get("accuracy", {}).get(str(k))
                m, c = mean_ci(acc) if acc else (math.nan, math.nan)
                cells.append(_pct(m, c))
                means.append(m)
            eps = [row["sites"][s].get("epsilon") for s in sites if s in row["sites"]]
            eps_text = ", ".join(f"{e:.2f}" for e in eps if e is not None) or "—"
            mean = float(np.mean(means)) if means and all(math.isfinite(m) for m in means) else math.nan
            out.append(
                f"| {row['strategy']} | "
                + " | ".join(cells)
                + f" | {_pct(mean, 0.0).split(' ±')[0]} | {eps_text} |"
            )
        out.append("")
    return "\n".join(out)


def table_csv(rows: list[dict[str, Any]], sites: list[str], shots: list[int]) -> str:
    """The long-format CSV (see the module docstring)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "kind", "learner", "site", "shots", "accuracy", "ci95", "episodes", "epsilon"])
    for row in rows:
        for s in sites:
            entry = row["sites"].get(s)
            if entry is None:
                continue
            for k in shots:
                acc = entry["accuracy"].get(str(k), [])
                m, c = mean_ci(acc)
                eps = entry.get("epsilon")
                w.writerow(
                    [
                        row["strategy"],
                        kind_of(row),
                        row["learner"],
                        s,
                        k,
                        f"{m:.6f}",
                        f"{c:.6f}",
                        len(acc),
                        "" if eps is None else f"{eps:.4f}",
                    ]
                )
    return buf.getvalue()


def write_report(
    out: Path, rows: list[dict[str, Any]], sites: list[str], shots: list[int], meta: dict[str, Any]
) -> list[Path]:
    """Write ``federated.md``, ``federated.csv`` and ``federated.json`` into `out`; returns their paths."""
    head = f"# Federated few-shot learning\n\n`{meta.get('command', '')}`\n\n"
    return [
        write_text_atomic(out / "federated.md", head + markdown(rows, sites, shots)),
        write_text_atomic(out / "federated.csv", table_csv(rows, sites, shots)),
        write_text_atomic(out / "federated.json", json.dumps({**meta, "rows": rows}, indent=1)),
    ]
