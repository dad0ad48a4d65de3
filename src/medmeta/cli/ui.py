"""Terminal output for the CLI: rich progress bars, tables and one-line errors."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from medmeta.eval.evaluate import EvalResult

# Wide enough for the results table when output is piped (rich falls back to 80 columns otherwise).
console = Console() if sys.stdout.isatty() else Console(width=120)
err_console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=120)


def say(message: str) -> None:
    """Print a plain line to stdout (no markup, no wrapping: safe for paths and piping)."""
    console.print(message, markup=False, highlight=False, soft_wrap=True)


_interrupt = {"reported": False}


def report_interrupt(message: str) -> None:
    """Print a command's own line for Ctrl-C on stderr (then the generic one of `medmeta.cli.main` is skipped)."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)
    _interrupt["reported"] = True


def interrupt_reported() -> bool:
    """True once a command has printed its own interruption line."""
    return _interrupt["reported"]


class RichProgress:
    """`medmeta.train.loop.ProgressHook` on stderr: a rich progress bar per phase on a terminal; on a pipe or
    a log file (no terminal), one plain line per phase at most every `LINE_SECONDS` and when it ends, so a
    long run written to a log still says what it is doing."""

    #: seconds between plain progress lines when stderr is not a terminal
    LINE_SECONDS = 30.0

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._plain: dict[str, Any] | None = None

    def start(self, description: str, total: int) -> None:
        if not self.enabled:
            return
        if not err_console.is_terminal:
            now = time.monotonic()
            self._plain = {
                "what": description,
                "total": total,
                "done": 0,
                "start": now,
                "last": now,
                "info": "",
            }
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, info="")

    def advance(self, n: int = 1, **info: Any) -> None:
        text = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        if self._plain is not None:
            p = self._plain
            p["done"] += n
            p["info"] = text or p["info"]
            if time.monotonic() - p["last"] >= self.LINE_SECONDS:
                p["last"] = time.monotonic()
                self._line()
            return
        if self._progress is None or self._task is None:
            return
        self._progress.update(self._task, advance=n, info=text)

    def _line(self) -> None:
        p = self._plain
        assert p is not None
        elapsed = time.monotonic() - p["start"]
        err_console.print(
            f"{p['what']}: {p['done']}/{p['total']} {p['info']} ({elapsed:.0f} s)".replace("  ", " "),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    def stop(self) -> None:
        if self._plain is not None:
            self._line()
            self._plain = None
        if self._progress is not None:
            self._progress.stop()
        self._progress, self._task = None, None


def results_table(results: list[EvalResult], title: str) -> Table:
    """Accuracy ± 95% CI and the other metrics, one row per test domain."""
    table = Table(title=title)
    for col in ("test domain", "way", "shot", "episodes", "accuracy % (95% CI)", "bal. acc %", "macro-F1 %"):
        table.add_column(col, justify="right" if col != "test domain" else "left")
    for r in results:
        bal = r.metrics.get("balanced_accuracy", (float("nan"), 0.0))[0]
        f1 = r.metrics.get("macro_f1", (float("nan"), 0.0))[0]
        table.add_row(
            r.domain,
            str(r.n_way),
            str(r.n_shot),
            str(r.episodes),
            f"{100 * r.accuracy:.2f} ± {100 * r.ci95:.2f}",
            f"{100 * bal:.2f}",
            f"{100 * f1:.2f}",
        )
    return table
