"""The benchmark report: ``report.md`` (figures as PNG files beside it) and a self-contained ``report.html``
(figures embedded as base64 PNG), both written from the results records and the protocol alone.
"""

from __future__ import annotations

import base64
import html
import math
import platform
import sys
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from medmeta.bench import plots
from medmeta.bench.cells import enumerate_cells, safe_name
from medmeta.bench.evaluation import METRICS
from medmeta.bench.protocol import Protocol
from medmeta.bench.summary import REFERENCE, REFERENCE_FEATURES, REFERENCES, Row

_NAMES = {
    "accuracy": "accuracy %",
    "balanced_accuracy": "bal. acc. %",
    "macro_f1": "macro-F1 %",
    "auc": "AUC %",
    "ece": "ECE %",
    "ece_calibrated": "ECE cal. %",
    "ece_loo": "ECE LOO %",
    "ece_loo_spread": "ECE LOO spread %",
}
_PACKAGES = ("medmeta", "torch", "numpy", "pydantic", "matplotlib", "scikit-learn", "safetensors", "pillow")


@dataclass(frozen=True)
class RunInfo:
    """What the report records about how the results were produced."""

    command: str
    wall_seconds: float | None  # None: a report of finished cells only (``--report-only``), no run
    resumed: bool
    data_root: str


def versions() -> dict[str, str]:
    """Python, platform and the versions of the packages that shape the results."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def code_summary(records: list[dict[str, Any]]) -> str:
    """``"0.1.0+git.abc1234 (120 records); not recorded (40 records)"``, most frequent first."""
    counts = Counter(str(r.get("code", "not recorded")) for r in records)
    return "; ".join(f"{code} ({n} record{'s' * (n != 1)})" for code, n in counts.most_common()) or "none"


def cell_text(mean: float, ci: float, scale: float = 100.0) -> str:
    """``"81.23 ± 1.45"`` (``"81.23"`` without a CI, ``"—"`` without a value)."""
    if not math.isfinite(mean):
        return "—"
    if not math.isfinite(ci):
        return f"{scale * mean:.2f}"
    return f"{scale * mean:.2f} ± {scale * ci:.2f}"


def _marked(row: Row, metric: str, md: bool) -> str:
    text = cell_text(*row.metrics[metric])
    mark = row.marks.get(metric, "")
    if mark == "best":
        return f"**{text}**" if md else f"<b>{html.escape(text)}</b> ▲"
    if mark == "tie":
        return f"{text} ≈" if md else f"{html.escape(text)} ≈"
    return text if md else html.escape(text)


def _acc_cell(row: Row | None, text: str, md: bool) -> str:
    if row is None:
        return text if md else html.escape(text)
    return _marked(row, "accuracy", md)


def accuracy_table(
    protocol: Protocol, rows: list[Row]
) -> tuple[list[str], list[list[tuple[Row | None, str]]]]:
    """Header and body of the main table: a row per method, a column per (domain, shots)."""
    columns = [(d, k) for d in protocol.held_out_domains for k in protocol.eval.shots]
    header = ["method"] + [f"{d} {k}-shot" for d, k in columns]
    index = {(r.method, r.domain, r.shots): r for r in rows}
    body: list[list[tuple[Row | None, str]]] = []
    for label in [m.label for m in protocol.all_methods] + [REFERENCE_FEATURES, REFERENCE]:
        line: list[tuple[Row | None, str]] = [(None, label)]
        for d, k in columns:
            r = index.get((label, d, "all" if label == REFERENCE else k))
            line.append((r, "" if r is not None else "—"))
        if any(r is not None for r, _ in line[1:]):
            body.append(line)
    return header, body


def seed_table(protocol: Protocol, rows: list[Row]) -> tuple[list[str], list[list[str]]] | None:
    """Header and body of the seed-spread table (None unless some row has two seeds or more).

    A cell is the standard deviation over training seeds of the seeds' mean accuracies, then each
    seed's mean (points). The last line says in how many seeds the column's best method was also the
    best of that seed alone.
    """
    if not any(len(r.seed_accuracy) > 1 for r in rows):
        return None
    header, body = accuracy_table(protocol, rows)
    lines = [[line[0][1]] + ["—" if r is None else _spread_text(r) for r, _ in line[1:]] for line in body]
    columns = [(d, k) for d in protocol.held_out_domains for k in protocol.eval.shots]
    lines.append(["▲ also best in its seeds"] + [_seed_wins(rows, d, k) for d, k in columns])
    return header, lines


def draw_table(protocol: Protocol, rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and body of the support-draw table: per cell, the standard deviation of the per-episode
    accuracy and its 10th-90th percentile range (points)."""
    header, body = accuracy_table(protocol, rows)
    lines = []
    for line in body:
        cells = []
        for r, _ in line[1:]:
            sd, p10, p90 = (math.nan,) * 3 if r is None else r.episode_spread
            cells.append(
                "—" if not math.isfinite(sd) else f"sd {100 * sd:.1f} ({100 * p10:.0f}–{100 * p90:.0f})"
            )
        lines.append([line[0][1], *cells])
    return header, lines


def _spread_text(r: Row) -> str:
    seeds = " / ".join(f"{100 * a:.1f}" for a in r.seed_accuracy.values())
    sd = r.seed_sd
    return seeds if not math.isfinite(sd) else f"sd {100 * sd:.2f}: {seeds}"


def _seed_wins(rows: list[Row], domain: str, shots: int) -> str:
    col = [r for r in rows if r.domain == domain and r.shots == shots and r.method not in REFERENCES]
    best = next((r for r in col if r.marks.get("accuracy") == "best"), None)
    if best is None:
        return "—"
    wins = 0
    for seed, acc in best.seed_accuracy.items():
        wins += all(acc >= r.seed_accuracy[seed] for r in col if seed in r.seed_accuracy)
    return f"{best.method}: {wins} of {len(best.seed_accuracy)}"


def gap_lines(protocol: Protocol, rows: list[Row]) -> list[list[str]]:
    """Per domain and shots: the best few-shot accuracy, the reference's, and the gap (points)."""
    out = []
    for d in protocol.held_out_domains:
        ref = next((r for r in rows if r.domain == d and r.method == REFERENCE), None)
        for k in protocol.eval.shots:
            col = [r for r in rows if r.domain == d and r.shots == k and r.method not in REFERENCES]
            if not col or ref is None:
                continue
            best = max(col, key=lambda r: r.metrics["accuracy"][0])
            gap = 100 * (ref.metrics["accuracy"][0] - best.metrics["accuracy"][0])
            out.append(
                [
                    d,
                    str(k),
                    best.method,
                    cell_text(*best.metrics["accuracy"]),
                    cell_text(*ref.metrics["accuracy"]),
                    f"{gap:+.2f}",
                ]
            )
    return out


def notes(protocol: Protocol, rows: list[Row], test_sources: dict[str, str]) -> list[str]:
    """Plain-language notes on how to read the numbers."""
    out = [
        "Accuracy and the other metrics are means over test episodes pooled across seeds, ± the half-width of the "
        "normal-approximation 95% confidence interval over episodes (AUC: episodes where it is defined).",
        "Per column (held-out domain, shots): **bold** / ▲ is the best mean; ≈ marks a method whose 95% CI overlaps "
        "the best one's (a statistical tie). Lower is better for ECE.",
        "The CI covers the test episodes of the trained models, not the choice of training seed; with several seeds, "
        "'Spread over training seeds' gives each seed's own mean accuracy and their standard deviation, and in how "
        "many seeds the best method was also best on that seed's models alone.",
        f"Every test episode has all classes of the held-out domain (n_way = its class count), {protocol.eval.n_query} "
        f"queries per class, {protocol.eval.episodes} episodes per seed; seed s uses test-episode seed "
        f"{protocol.eval.seed} + s, and every method sees the same episodes.",
        f"The supervised reference trains the same backbone ({protocol.backbone}) on the held-out domain's training "
        "split with cross-entropy and classifies every test image; its accuracy CI is binomial over test images, its "
        "other metrics are single values over the whole test set, averaged over seeds. The gap is the reference's "
        "accuracy minus the best few-shot accuracy. 'supervised reference features' tests that network's features "
        "in the methods' own few-shot episodes (with the reference method's own few-shot head): what a "
        "representation trained with every label of the domain gives from K labelled images, a ceiling for "
        "representations that never saw those labels; neither reference row is marked best.",
        "ECE is the mean per-episode expected calibration error (15 bins); an episode has few queries, so it reads "
        "higher than an ECE pooled over all queries. The reliability diagrams pool every query of every episode. "
        "'ECE cal.' is the ECE after temperature scaling fitted on the training domains' validation episodes; "
        "'ECE LOO' after a temperature fitted on each episode's own support by leave-one-out (first "
        "eval.loo_episodes episodes, 2 shots or more); 'ECE LOO spread' after the same fit shrunk towards the "
        "support's spread times a factor fitted on the training domains' validation episodes (what medmeta "
        "adapt does for methods whose logits are negative distances: ProtoNet, SimpleShot; blank for others).",
        "Each episode draws a new support set: 'Spread over support draws' shows how far one user's result (one "
        "handful of labelled images) can fall from the mean, which the CI of the mean does not.",
    ]
    for d in protocol.held_out_domains:
        out.append(f"{d}: test images are {test_sources.get(d, 'its test split')}.")
    small = sorted(
        {
            (r.domain, r.shots, r.n_query)
            for r in rows
            if r.method != REFERENCE and r.n_query < protocol.eval.n_query
        }
    )
    for d, k, q in small:
        out.append(
            f"{d}, {k}-shot: only {q} queries per class (its smallest test class is too small for {protocol.eval.n_query})."
        )
    return out


def write_report(
    protocol: Protocol,
    rows: list[Row],
    records: list[dict[str, Any]],
    out: str | Path,
    info: RunInfo,
    test_sources: dict[str, str],
) -> tuple[Path, Path]:
    """Write ``OUT/report.md`` (+ ``OUT/plots/*.png``) and ``OUT/report.html``; returns their paths."""
    out = Path(out)
    figures = {
        "accuracy_vs_shots": ("Accuracy against shots", plots.accuracy_vs_shots(protocol, rows)),
        "training_curves": ("Training curves (mean over seeds)", plots.training_curves(protocol, records)),
        "reliability": ("Reliability diagrams", plots.reliability(protocol, records)),
    }
    for d in protocol.held_out_domains:
        figures[f"confusion_{safe_name(d)}"] = (
            f"Confusion matrix, {d} held out (row-normalised %)",
            plots.confusion_matrices(protocol, rows, records, d),
        )
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for key, (_, png) in figures.items():
        (out / "plots" / f"{key}.png").write_bytes(png)
    n_done = sum(r.get("kind") == "cell" for r in records)
    n_total = len(enumerate_cells(protocol))
    compute = sum(
        float(r.get("seconds", 0.0)) for r in records if r.get("kind") in ("cell", "train", "pretrain")
    )
    compute += sum(float(r.get("train_seconds", 0.0)) for r in records if r.get("kind") == "reference")
    repro = {
        "command": info.command,
        "config fingerprint": protocol.fingerprint(),
        "seeds": ", ".join(map(str, protocol.seeds)),
        "test-episode seeds": ", ".join(str(protocol.eval.seed + s) for s in protocol.seeds),
        "cells finished": f"{n_done} of {n_total}" + ("" if n_done == n_total else " (partial results)"),
        "wall time (this session)": (
            "none: report written from the finished cells (--report-only)"
            if info.wall_seconds is None
            else f"{info.wall_seconds:.0f} s" + (" (resumed run)" if info.resumed else "")
        ),
        "compute time recorded (training + testing, all sessions)": f"{compute:.0f} s",
        "code that produced the records": code_summary(records),
        "data root": info.data_root,
        **versions(),
    }
    config_text = yaml.safe_dump(protocol.as_config(), sort_keys=False)
    parts = _Parts(protocol, rows, records, figures, repro, config_text, notes(protocol, rows, test_sources))
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(parts.markdown())
    html_path.write_text(parts.html())
    return md_path, html_path


@dataclass
class _Parts:
    protocol: Protocol
    rows: list[Row]
    records: list[dict[str, Any]]
    figures: dict[str, tuple[str, bytes]]
    repro: dict[str, str]
    config_text: str
    notes: list[str]

    def _setup(self) -> list[str]:
        p = self.protocol
        lines = [
            f"Leave-one-domain-out over {', '.join(p.data.domains)}: each method is (meta-)trained on the other "
            f"domains and tested on the held-out one. Methods: {', '.join(m.label for m in p.all_methods)}. "
            f"Shots: {', '.join(map(str, p.eval.shots))}. Seeds: {', '.join(map(str, p.seeds))}. "
            f"Backbone {p.backbone}, {p.data.image_size}x{p.data.image_size} px, {p.data.channels} channel(s)."
        ]
        for d in p.held_out_domains:
            lines.append(f"{d} held out: trained on {', '.join(p.training_domains(d))}.")
        return lines

    def _detail(self) -> tuple[list[str], list[list[tuple[Row, str]]]]:
        header = ["method", "domain", "shots", "way", "queries/class"] + [_NAMES[m] for m in METRICS]
        return header, [[(r, m) for m in METRICS] for r in self.rows]

    def markdown(self) -> str:
        p = self.protocol
        setup = self._setup()
        out = [f"# medmeta benchmark: {p.name}", "", p.description.strip(), "", setup[0], ""]
        out += [f"- {line}" for line in setup[1:]] + [""]
        header, body = accuracy_table(p, self.rows)
        out += ["## Accuracy % (± 95% CI)", "", _md_row(header), _md_row(["---"] * len(header))]
        for line in body:
            out.append(_md_row([_acc_cell(r, text, True) for r, text in line]))
        spread = seed_table(p, self.rows)
        if spread is not None:
            out += ["", _SPREAD_TITLE_MD, "", _md_row(spread[0]), _md_row(["---"] * len(spread[0]))]
            out += [_md_row(line) for line in spread[1]]
        draws = draw_table(p, self.rows)
        out += ["", _DRAW_TITLE_MD, "", _md_row(draws[0]), _md_row(["---"] * len(draws[0]))]
        out += [_md_row(line) for line in draws[1]]
        header, detail = self._detail()
        out += ["", "## All metrics", "", _md_row(header), _md_row(["---"] * len(header))]
        for cells in detail:
            r = cells[0][0]
            ident = _ident(r)
            out.append(_md_row(ident + [_marked(r, m, True) for _, m in cells]))
        gaps = gap_lines(p, self.rows)
        if gaps:
            out += [
                "",
                "## Gap to the fully-supervised reference",
                "",
                _md_row(_GAP_HEADER),
                _md_row(["---"] * 6),
            ]
            out += [_md_row(g) for g in gaps]
        out += ["", "## Figures", ""]
        for key, (title, _) in self.figures.items():
            out += [f"### {title}", "", f"![{title}](plots/{key}.png)", ""]
        out += ["## Notes", "", *[f"- {n}" for n in self.notes], "", "## Reproducibility", ""]
        out += [f"- {k}: {v}" for k, v in self.repro.items()]
        out += ["", "Exact config:", "", "```yaml", self.config_text.rstrip(), "```", ""]
        return "\n".join(out)

    def html(self) -> str:
        p = self.protocol
        esc = html.escape
        out = [
            "<!DOCTYPE html><html><head><meta charset='utf-8'>",
            f"<title>medmeta benchmark: {esc(p.name)}</title><style>{_CSS}</style></head><body>",
            f"<h1>medmeta benchmark: {esc(p.name)}</h1><p>{esc(p.description.strip())}</p>",
            *[f"<p>{esc(s)}</p>" for s in self._setup()],
            "<h2>Accuracy % (± 95% CI)</h2>",
        ]
        header, body = accuracy_table(p, self.rows)
        out.append(_html_table(header, [[_acc_cell(r, text, False) for r, text in line] for line in body]))
        spread = seed_table(p, self.rows)
        if spread is not None:
            out.append(f"<h2>{esc(_SPREAD_TITLE_MD[3:])}</h2>")
            out.append(_html_table(spread[0], [[esc(x) for x in line] for line in spread[1]]))
        draws = draw_table(p, self.rows)
        out.append(f"<h2>{esc(_DRAW_TITLE_MD[3:])}</h2>")
        out.append(_html_table(draws[0], [[esc(x) for x in line] for line in draws[1]]))
        header, detail = self._detail()
        lines = []
        for cells in detail:
            r = cells[0][0]
            ident = _ident(r)
            lines.append([esc(x) for x in ident] + [_marked(r, m, False) for _, m in cells])
        out += ["<h2>All metrics</h2>", _html_table(header, lines)]
        gaps = gap_lines(p, self.rows)
        if gaps:
            out += [
                "<h2>Gap to the fully-supervised reference</h2>",
                _html_table(_GAP_HEADER, [[esc(x) for x in g] for g in gaps]),
            ]
        out.append("<h2>Figures</h2>")
        for title, png in self.figures.values():
            data = base64.b64encode(png).decode("ascii")
            out.append(f"<h3>{esc(title)}</h3><img alt='{esc(title)}' src='data:image/png;base64,{data}'>")
        out += ["<h2>Notes</h2><ul>", *[f"<li>{esc(n).replace('**', '')}</li>" for n in self.notes], "</ul>"]
        out += [
            "<h2>Reproducibility</h2>",
            _html_table(["what", "value"], [[esc(k), esc(v)] for k, v in self.repro.items()]),
        ]
        out += ["<h3>Exact config</h3>", f"<pre>{esc(self.config_text)}</pre>", "</body></html>"]
        return "\n".join(out)


_SPREAD_TITLE_MD = "## Spread over training seeds (accuracy %: sd over seeds, then each seed's mean)"
_DRAW_TITLE_MD = "## Spread over support draws (accuracy % of single episodes: sd, and 10th-90th percentile)"
_GAP_HEADER = [
    "held-out domain",
    "shots",
    "best few-shot method",
    "its accuracy %",
    "reference accuracy %",
    "gap (points)",
]
_CSS = (
    "body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
    "th{background:#f0f0f0}img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto}"
)


def _ident(r: Row) -> list[str]:
    """Method, domain, shots, ways and queries per class of a summary row (no queries for the reference)."""
    return [r.method, r.domain, str(r.shots), str(r.n_way), "—" if r.method == REFERENCE else str(r.n_query)]


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _html_table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in line) + "</tr>" for line in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
