"""The report's figures as PNG bytes (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from medmeta.bench.protocol import Protocol
from medmeta.bench.summary import REFERENCE, REFERENCE_FEATURES, REFERENCES, Row


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def _grid(n: int, width: float = 4.0, height: float = 3.2, rows: int | None = None) -> tuple[Any, Any]:
    plt = _pyplot()
    ncols = min(n, 4) if rows is None else n
    nrows = math.ceil(n / ncols) if rows is None else rows
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.ravel()[n if rows is None else nrows * ncols :]:
        ax.set_visible(False)
    return fig, axes


def accuracy_vs_shots(protocol: Protocol, rows: list[Row]) -> bytes:
    """One panel per held-out domain: accuracy ± 95% CI against shots, a line per method."""
    domains = protocol.held_out_domains
    fig, axes = _grid(len(domains))
    for ax, domain in zip(axes.ravel(), domains, strict=False):
        for m in protocol.all_methods:
            pts = [r for r in rows if r.domain == domain and r.method == m.label]
            if not pts:
                continue
            x = [int(r.shots) for r in pts]
            y = [100 * r.metrics["accuracy"][0] for r in pts]
            e = [100 * r.metrics["accuracy"][1] for r in pts]
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=m.label)
        ceiling = [r for r in rows if r.domain == domain and r.method == REFERENCE_FEATURES]
        if ceiling:
            ax.plot(
                [int(r.shots) for r in ceiling],
                [100 * r.metrics["accuracy"][0] for r in ceiling],
                color="black",
                linestyle=":",
                marker="x",
                label=REFERENCE_FEATURES,
            )
        for r in rows:
            if r.domain == domain and r.method == REFERENCE:
                mean, ci = 100 * r.metrics["accuracy"][0], 100 * r.metrics["accuracy"][1]
                ax.axhline(mean, color="black", linestyle="--", label=REFERENCE)
                ax.axhspan(mean - ci, mean + ci, color="black", alpha=0.08)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(protocol.eval.shots, [str(k) for k in protocol.eval.shots])
        ax.set_title(f"held out: {domain}")
        ax.set_xlabel("shots (support images per class)")
        ax.set_ylabel("accuracy %")
        ax.grid(alpha=0.3)
    axes.ravel()[0].legend(fontsize=7)
    return _png(fig)


def training_curves(protocol: Protocol, records: list[dict[str, Any]]) -> bytes:
    """Per held-out domain: training loss and validation accuracy per epoch (mean over seeds)."""
    domains = protocol.held_out_domains
    fig, axes = _grid(2, width=5.0, height=3.6, rows=len(domains))
    for i, domain in enumerate(domains):
        loss_ax, val_ax = axes[i]
        for m in protocol.all_methods:
            hist = [
                r["history"]
                for r in records
                if r.get("kind") == "train" and r["method"] == m.label and r["domain"] == domain
            ]
            if not hist:
                continue
            n = min(len(h) for h in hist)
            epochs = np.arange(1, n + 1)
            loss = np.mean([[e["train_loss"] for e in h[:n]] for h in hist], axis=0)
            loss_ax.plot(epochs, loss, marker=".", label=m.label)
            vals = [[e.get("val_accuracy", math.nan) for e in h[:n]] for h in hist]
            val_ax.plot(epochs, 100 * np.mean(vals, axis=0), marker=".", label=m.label)
        loss_ax.set_title(f"{domain} held out: training loss", fontsize=9)
        val_ax.set_title(f"{domain} held out: validation accuracy %", fontsize=9)
        for ax in (loss_ax, val_ax):
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    if axes[0][0].get_legend_handles_labels()[0]:  # nothing trained (frozen entries only): no legend
        axes[0][0].legend(fontsize=7)
    return _png(fig)


def reliability(protocol: Protocol, records: list[dict[str, Any]]) -> bytes:
    """Per held-out domain, at the most shots: accuracy against confidence per bin, a line per method."""
    domains, k = protocol.held_out_domains, max(protocol.eval.shots)
    fig, axes = _grid(len(domains))
    for ax, domain in zip(axes.ravel(), domains, strict=False):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
        for m in protocol.all_methods:
            bins = [
                np.asarray(r["calibration"])
                for r in records
                if r.get("kind") == "cell"
                and r["method"] == m.label
                and r["domain"] == domain
                and r["shots"] == k
            ]
            if not bins:
                continue
            total = np.sum(bins, axis=0)  # (n_bins, 3)
            used = total[:, 0] > 0
            ax.plot(
                total[used, 2] / total[used, 0], total[used, 1] / total[used, 0], marker="o", label=m.label
            )
        ax.set_title(f"{domain}, {k}-shot")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes.ravel()[0].legend(fontsize=7)
    return _png(fig)


def _heatmap(ax: Any, matrix: np.ndarray, classes: list[str], title: str) -> None:
    rows = matrix.sum(1, keepdims=True)
    norm = matrix / np.maximum(rows, 1)
    ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    n = len(classes)
    short = [c if len(c) <= 12 else c[:11] + "…" for c in classes]
    ax.set_xticks(range(n), short, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), short, fontsize=7)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{100 * norm[i, j]:.0f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)


def confusion_matrices(
    protocol: Protocol, rows: list[Row], records: list[dict[str, Any]], domain: str
) -> bytes:
    """One held-out domain: the best method's confusion at the most shots, beside the reference's (row %)."""
    k = max(protocol.eval.shots)
    candidates = [r for r in rows if r.domain == domain and r.shots == k and r.method not in REFERENCES]
    panels: list[tuple[np.ndarray, list[str], str]] = []
    if candidates:
        best = max(candidates, key=lambda r: r.metrics["accuracy"][0])
        found = [
            r
            for r in records
            if r.get("kind") == "cell"
            and r["method"] == best.method
            and r["domain"] == domain
            and r["shots"] == k
        ]
        panels.append(
            (
                np.sum([r["confusion"] for r in found], axis=0),
                found[0]["classes"],
                f"{best.method}, {k}-shot (best)",
            )
        )
    refs = [r for r in records if r.get("kind") == "reference" and r["domain"] == domain]
    if refs:
        panels.append((np.sum([r["confusion"] for r in refs], axis=0), refs[0]["classes"], REFERENCE))
    fig, axes = _grid(max(1, len(panels)), width=4.8, height=4.4)
    for ax, (matrix, classes, title) in zip(axes.ravel(), panels, strict=False):
        _heatmap(ax, matrix, classes, f"{domain}: {title}")
    return _png(fig)
