"""The segmentation benchmark's outputs: ``summary.csv``, ``report.md`` and ``report.html``.

A row is one (method, test structure, shots): the per-episode Dice and HD95 of every seed are pooled, each
reported as mean ± the normal-approximation 95% CI (`medmeta.eval.metrics.mean_ci`; HD95 skips episodes
where it is undefined). In a column (structure, shots) the best mean Dice is marked ``best`` and a method
whose CI overlaps it ``tie``. As in the classification summary, the CI says how sure the mean is for these
trained models, not how much another training seed would move it (``dice_seed_sd`` does).
"""

from __future__ import annotations

import csv
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medmeta.bench.seg_protocol import SegProtocol
from medmeta.eval.metrics import mean_ci
from medmeta.outputs import write_text_atomic


@dataclass
class SegRow:
    """One line of the summary; ``dice``/``hd95`` are ``(mean, ci95)``, ``mark`` is best/tie/''."""

    method: str
    structure: str
    shots: int
    seeds: int
    episodes: int
    dice: tuple[float, float]
    hd95: tuple[float, float]
    adapt_seconds: float
    seed_dice: dict[int, float] = field(default_factory=dict)
    mark: str = ""
    note: str = ""

    @property
    def seed_sd(self) -> float:
        """Standard deviation of the seeds' mean Dice (NaN with fewer than 2 seeds)."""
        v = list(self.seed_dice.values())
        return float(np.std(v, ddof=1)) if len(v) > 1 else math.nan


def _pooled(records: list[dict[str, Any]], metric: str) -> tuple[float, float]:
    v = np.concatenate([np.asarray(r["per_episode"][metric], dtype=np.float64) for r in records])
    finite = v[np.isfinite(v)]
    return mean_ci(finite) if finite.size else (math.nan, math.nan)


def seg_summarize(
    protocol: SegProtocol, records: list[dict[str, Any]], structures: list[str]
) -> list[SegRow]:
    """Rows in protocol order (structure, shots, then methods), best and tied Dice marked per column."""
    cells = [r for r in records if r.get("kind") == "cell"]
    rows: list[SegRow] = []
    for structure in structures:
        for shots in protocol.eval.shots:
            column: list[SegRow] = []
            for m in protocol.all_methods:
                mine = [
                    r
                    for r in cells
                    if (r["method"], r["structure"], r["shots"]) == (m.label, structure, shots)
                ]
                if not mine:
                    continue
                scored = [r for r in mine if r.get("episodes")]
                if not scored:
                    nan = (math.nan, math.nan)
                    column.append(
                        SegRow(m.label, structure, shots, 0, 0, nan, nan, math.nan, note=mine[0]["note"])
                    )
                    continue
                column.append(
                    SegRow(
                        method=m.label,
                        structure=structure,
                        shots=shots,
                        seeds=len(scored),
                        episodes=sum(int(r["episodes"]) for r in scored),
                        dice=_pooled(scored, "dice"),
                        hd95=_pooled(scored, "hd95"),
                        adapt_seconds=float(
                            np.mean(np.concatenate([r["per_episode"]["adapt_seconds"] for r in scored]))
                        ),
                        seed_dice={int(r["seed"]): float(np.mean(r["per_episode"]["dice"])) for r in scored},
                    )
                )
            _mark(column)
            rows += column
    return rows


def _mark(column: list[SegRow]) -> None:
    scored = [r for r in column if math.isfinite(r.dice[0])]
    if not scored:
        return
    best = max(scored, key=lambda r: r.dice[0])
    for r in scored:
        r.mark = (
            "best"
            if r is best
            else "tie"
            if abs(r.dice[0] - best.dice[0]) <= r.dice[1] + best.dice[1]
            else ""
        )


def _num(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.6g}"


def seg_summary_csv(rows: list[SegRow]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["method", "structure", "shots", "seeds", "episodes", "dice", "dice_ci95", "dice_seed_sd",
         "hd95", "hd95_ci95", "adapt_seconds", "mark", "note"]
    )  # fmt: skip
    for r in rows:
        w.writerow(
            [r.method, r.structure, r.shots, r.seeds, r.episodes, _num(r.dice[0]), _num(r.dice[1]),
             _num(r.seed_sd), _num(r.hd95[0]), _num(r.hd95[1]), _num(r.adapt_seconds), r.mark, r.note]
        )  # fmt: skip
    return buf.getvalue()


def _cell(r: SegRow | None, metric: str) -> str:
    if r is None:
        return "—"
    if r.note:
        return "n/a"
    mean, ci = r.dice if metric == "dice" else r.hd95
    if not math.isfinite(mean):
        return "n/a"
    scale = 100.0 if metric == "dice" else 1.0
    mark = {"best": " ▲", "tie": " ≈"}.get(r.mark, "") if metric == "dice" else ""
    return f"{scale * mean:.1f} ± {scale * ci:.1f}{mark}"


def _table(protocol: SegProtocol, rows: list[SegRow], structures: list[str], metric: str) -> list[list[str]]:
    head = ["method", "shots", *structures, "adapt s/episode"]
    body = []
    for m in protocol.all_methods:
        for shots in protocol.eval.shots:
            mine = {r.structure: r for r in rows if r.method == m.label and r.shots == shots}
            if not mine:
                continue
            times = [r.adapt_seconds for r in mine.values() if math.isfinite(r.adapt_seconds)]
            t = f"{np.mean(times):.3f}" if times else "n/a"
            body.append([m.label, str(shots), *(_cell(mine.get(s), metric) for s in structures), t])
    return [head, *body]


def write_seg_report(
    protocol: SegProtocol, rows: list[SegRow], structures: list[str], out: Path, command: str
) -> tuple[Path, Path, Path]:
    """Write ``summary.csv``, ``report.md`` and ``report.html`` into `out`; returns their paths."""
    csv_path = write_text_atomic(out / "summary.csv", seg_summary_csv(rows))
    tables = {m: _table(protocol, rows, structures, m) for m in ("dice", "hd95")}
    titles = {
        "dice": "Dice % (mean ± 95% CI over episodes, seeds pooled; ▲ best, ≈ CI overlaps the best)",
        "hd95": f"HD95 in pixels of the {protocol.data.image_size}-px grid (mean ± 95% CI)",
    }
    about = (
        f"Trained on {', '.join(protocol.data.train)}; tested on {', '.join(protocol.data.test)} with "
        f"{protocol.eval.episodes} episodes of {protocol.eval.n_query} queries per structure, shots and seed "
        f"(seeds {protocol.seeds}; test episodes seeded eval.seed + seed)."
    )
    md = [f"# {protocol.name}", "", protocol.description.strip(), "", about, "", f"Command: `{command}`", ""]
    for metric, table in tables.items():
        md += [f"## {titles[metric]}", "", *("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |"
               for line in table[:1]), "|" + "---|" * len(table[0]),
               *("| " + " | ".join(line) + " |" for line in table[1:]), ""]  # fmt: skip
    md_path = write_text_atomic(out / "report.md", "\n".join(md))
    parts = [f"<h1>{html.escape(protocol.name)}</h1><p>{html.escape(protocol.description)}</p>"]
    parts += [f"<p>{html.escape(about)}</p><p>Command: <code>{html.escape(command)}</code></p>"]
    for metric, table in tables.items():
        head = "".join(f"<th>{html.escape(h)}</th>" for h in table[0])
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in table[1:]
        )
        parts.append(
            f"<h2>{html.escape(titles[metric])}</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>"
        + html.escape(protocol.name)
        + "</title><style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px}"
        "table{border-collapse:collapse}</style></head><body>" + "".join(parts) + "</body></html>"
    )
    html_path = write_text_atomic(out / "report.html", page)
    return csv_path, md_path, html_path
