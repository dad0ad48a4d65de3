"""``medmeta benchmark``: a reproducible leave-one-domain-out few-shot benchmark with reports.

`run` = `runner.run_benchmark` (every cell, resumable) + `summary.write_summary` (``summary.csv``) +
`report.write_report` (``report.md``, ``report.html``).

Example:
    >>> from medmeta.bench import load_protocol, run
    >>> result = run(load_protocol("configs/quick.yaml"), "runs/bench_quick")  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmeta.bench.cells import enumerate_cells, enumerate_jobs
from medmeta.bench.protocol import Protocol, load_protocol, parse_protocol
from medmeta.bench.report import RunInfo, write_report
from medmeta.bench.runner import RunOutcome, RunProgress, run_benchmark
from medmeta.bench.summary import Row, summarize, write_summary
from medmeta.data.root import data_root


@dataclass
class BenchmarkResult:
    """A finished benchmark: this session's outcome, the summary rows and the files written."""

    outcome: RunOutcome
    rows: list[Row]
    summary_csv: Path
    report_md: Path
    report_html: Path


def run(
    protocol: Protocol,
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    progress: RunProgress | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    command: str = "",
    workers: int = 1,
) -> BenchmarkResult:
    """Run or resume `protocol` in `out` (`workers` jobs at once, see `run_benchmark`), then write
    ``summary.csv``, ``report.md`` and ``report.html``."""
    start = time.perf_counter()
    outcome = run_benchmark(
        protocol, out, data_dir=data_dir, progress=progress, on_record=on_record, workers=workers
    )
    rows = summarize(protocol, outcome.records)
    csv_path = write_summary(rows, out)
    root = data_dir if data_dir is not None else protocol.data.data_dir
    info = RunInfo(
        command=command or f"medmeta benchmark CONFIG --out {out}",
        wall_seconds=time.perf_counter() - start,
        resumed=outcome.resumed,
        data_root=str(data_root(root)),
    )
    md, html = write_report(protocol, rows, outcome.records, out, info, outcome.test_sources)
    return BenchmarkResult(outcome, rows, csv_path, md, html)


__all__ = [
    "BenchmarkResult",
    "Protocol",
    "enumerate_cells",
    "enumerate_jobs",
    "load_protocol",
    "parse_protocol",
    "run",
    "run_benchmark",
]
