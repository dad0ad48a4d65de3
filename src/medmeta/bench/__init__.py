"""``medmeta benchmark``: a reproducible leave-one-domain-out few-shot benchmark with reports.

`run` runs (or resumes) a protocol and writes ``summary.csv``, ``report.md`` and ``report.html``;
`report` writes them from the cells already finished (see `medmeta.bench.api`).

Example:
    >>> from medmeta.bench import load_protocol, run
    >>> result = run(load_protocol("configs/quick.yaml"), "runs/bench_quick")  # doctest: +SKIP
"""

from medmeta.bench.api import BenchmarkResult, report, run
from medmeta.bench.cells import enumerate_cells, enumerate_jobs
from medmeta.bench.protocol import Protocol, load_protocol, parse_protocol
from medmeta.bench.schedule import run_benchmark

__all__ = [
    "BenchmarkResult",
    "Protocol",
    "enumerate_cells",
    "enumerate_jobs",
    "load_protocol",
    "parse_protocol",
    "report",
    "run",
    "run_benchmark",
]
