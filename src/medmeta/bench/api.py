"""Run a benchmark protocol and write its outputs (`run`), or only write them (`report`).

`run` = `schedule.run_benchmark` (every cell, resumable) + `summary.write_summary` (``summary.csv``) +
`report.write_report` (``report.md``, ``report.html``); `report` writes the last two from the cells
already finished, running nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmeta.bench.cells import enumerate_jobs
from medmeta.bench.domains import DomainSplits
from medmeta.bench.executor import ClusterOptions
from medmeta.bench.jobs import RunProgress, load_benchmark_domains
from medmeta.bench.protocol import Protocol
from medmeta.bench.report import RunInfo, write_report
from medmeta.bench.schedule import RunOutcome, in_job_order, run_benchmark
from medmeta.bench.store import ResultsStore, check_fingerprint
from medmeta.bench.summary import Row, summarize, write_summary
from medmeta.data.root import data_root
from medmeta.errors import ConfigError


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
    domains: dict[str, DomainSplits] | None = None,
    executor: ClusterOptions | None = None,
) -> BenchmarkResult:
    """Run or resume `protocol` in `out` (`workers` jobs at once, in child processes or on `executor`:
    see `run_benchmark`), then write ``summary.csv``, ``report.md`` and ``report.html``."""
    start = time.perf_counter()
    outcome = run_benchmark(
        protocol,
        out,
        data_dir=data_dir,
        progress=progress,
        on_record=on_record,
        workers=workers,
        domains=domains,
        executor=executor,
    )
    root = data_dir if data_dir is not None else protocol.data.data_dir
    return _write_outputs(protocol, Path(out), outcome, root, command, time.perf_counter() - start)


def report(
    protocol: Protocol,
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    command: str = "",
    domains: dict[str, DomainSplits] | None = None,
) -> BenchmarkResult:
    """Write ``summary.csv``, ``report.md`` and ``report.html`` from the cells already finished in `out`,
    running nothing (safe while a run is appending to `out`: the results file is only read).

    Raises:
        ConfigError: `out` holds no results, or results of another protocol.
    """
    out = Path(out)
    store = ResultsStore(out, repair=False)
    if not store.records:
        raise ConfigError(f"no results in {out}: run `medmeta benchmark CONFIG --out {out}` first")
    check_fingerprint(out, protocol.fingerprint(), protocol.as_config())
    root = data_dir if data_dir is not None else protocol.data.data_dir
    if domains is None:
        domains = load_benchmark_domains(protocol, root)
    records = in_job_order(store.records, enumerate_jobs(protocol))
    outcome = RunOutcome(
        out=out, records=records, resumed=True, test_sources={d: s.test_source for d, s in domains.items()}
    )
    return _write_outputs(protocol, out, outcome, root, command, None)


def _write_outputs(
    protocol: Protocol,
    out: Path,
    outcome: RunOutcome,
    root: str | Path | None,
    command: str,
    wall_seconds: float | None,
) -> BenchmarkResult:
    rows = summarize(protocol, outcome.records)
    csv_path = write_summary(rows, out)
    info = RunInfo(
        command=command or f"medmeta benchmark CONFIG --out {out}",
        wall_seconds=wall_seconds,
        resumed=outcome.resumed,
        data_root=str(data_root(root)),
    )
    md, html = write_report(protocol, rows, outcome.records, out, info, outcome.test_sources)
    return BenchmarkResult(outcome, rows, csv_path, md, html)
