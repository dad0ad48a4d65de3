"""``medmeta benchmark CONFIG``: run a leave-one-domain-out few-shot benchmark and write its report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from medmeta.bench.protocol import Protocol
from medmeta.cli.ui import console, err_console, report_interrupt, say
from medmeta.errors import ConfigError

if TYPE_CHECKING:
    from medmeta.bench.domains import DomainSplits
    from medmeta.bench.executor import ClusterOptions


class BenchProgress:
    """The whole run (weighted by the rough cost model, with an ETA) above a bar for the current phase."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
            speed_estimate_period=3600.0,
        )
        self._overall: TaskID | None = None
        self._phase: TaskID | None = None
        self._running: list[TaskID] = []

    def __enter__(self) -> BenchProgress:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.stop()

    def plan(self, total: float, done: float) -> None:
        if self.enabled:
            self._overall = self._progress.add_task("benchmark", total=max(total, 1e-9), info="")
            self._progress.update(self._overall, completed=done)

    def job(self, description: str) -> None:
        """The running job; with workers one line per running job, each shown on its own row."""
        if not self.enabled or self._overall is None:
            return
        lines = [line for line in description.split("\n") if line]
        for task in self._running:
            self._progress.remove_task(task)
        self._running = []
        if len(lines) > 1:
            self._running = [self._progress.add_task(f"  {line}", total=None, info="") for line in lines]
        info = lines[0] if len(lines) == 1 else f"{len(lines)} jobs running" if lines else ""
        self._progress.update(self._overall, info=info)

    def job_done(self, units: float) -> None:
        if self.enabled and self._overall is not None:
            self._progress.advance(self._overall, units)

    def start(self, description: str, total: int) -> None:
        if not self.enabled:
            return
        if self._phase is not None:
            self._progress.remove_task(self._phase)
        self._phase = self._progress.add_task(f"  {description}", total=total, info="")

    def advance(self, n: int = 1, **info: Any) -> None:
        if self._phase is None:
            return
        text = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        self._progress.update(self._phase, advance=n, info=text)

    def stop(self) -> None:
        if self._phase is not None:
            self._progress.remove_task(self._phase)
        self._phase = None


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def _plan_table(protocol: Protocol, domains: dict[str, DomainSplits]) -> Table:
    """Every job with its cells, training domains, ways, queries and rough cost."""
    from medmeta.bench.cells import PretrainJob, ReferenceJob, enumerate_jobs, job_cost
    from medmeta.bench.domains import query_size
    from medmeta.bench.jobs import class_counts

    ways = class_counts(domains)
    table = Table(title=f"{protocol.name}: jobs and cells")
    for col in (
        "held out",
        "seed",
        "method",
        "trained on",
        "test way",
        "shots (queries/class)",
        "rough cost",
    ):
        table.add_column(col)
    for job in enumerate_jobs(protocol):
        cost = _duration(job_cost(protocol, job, ways))
        if isinstance(job, PretrainJob):
            method = f"pretrain {job.representation.name} ({job.representation.ssl})"
            pool = ", ".join(job.domains) + " (unlabelled)"
            table.add_row(job.scope, str(job.seed), method, pool, "-", "-", cost)
            continue
        d = domains[job.domain]
        if isinstance(job, ReferenceJob):
            method, trained, shots = "supervised reference", f"{job.domain} training split", "all test images"
            if protocol.reference.few_shot:
                shots += "; its features at " + ", ".join(str(k) for k in protocol.eval.shots) + " shots"
        else:
            method = job.method.label
            trained = (
                "nothing (frozen)" if job.method.frozen else ", ".join(protocol.training_domains(job.domain))
            )
            shots = ", ".join(
                f"{c.shots} ({query_size(d, c.shots, protocol.eval.n_query)})" for c in job.cells
            )
        table.add_row(job.domain, str(job.seed), method, trained, str(d.n_classes), shots, cost)
    return table


def _say_remaining(protocol: Protocol, out: Path, ways: dict[str, int], n_cells: int, workers: int) -> None:
    """Dry run on an existing run folder: what a resumed run still has to do."""
    from medmeta.bench.schedule import remaining_work
    from medmeta.bench.store import stored_fingerprint

    if stored_fingerprint(out) != protocol.fingerprint():
        say(f"{out} holds results of another config: this one would need another --out")
        return
    done, left = remaining_work(protocol, out, ways)
    say(
        f"{out} already holds {done} of {n_cells} cells: a resumed run has roughly {_duration(left)} left on "
        f"one CPU thread ({_duration(left / workers)} with {workers} worker{'s' if workers > 1 else ''})"
    )


def benchmark(
    config: Path = typer.Argument(..., help="Benchmark protocol YAML (see configs/quick.yaml)."),
    out: Path | None = typer.Option(
        None, "--out", help="Run folder (default runs/bench/NAME); resumed if it exists."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data root (default $MEDMETA_DATA)."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="List the jobs and cells with their rough cost; run nothing."
    ),
    report_only: bool = typer.Option(
        False,
        "--report-only",
        help="Write summary.csv and the report from the cells already finished in OUT; run nothing "
        "(safe while a run is in progress).",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress display."),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        help="Jobs run at once, each in its own process with train.threads (1 when 0) torch threads; "
        "on a CPU with N free cores try N (with --executor ray or slurm: actors or Slurm jobs at once).",
    ),
    executor: str = typer.Option(
        "local",
        "--executor",
        help="Where jobs run: local (this machine's processes), ray (Ray actors: a local Ray, or a cluster "
        "with --ray-address) or slurm (one submitit job per benchmark job). See docs/cluster.md.",
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="A running Ray cluster: auto (on one of its nodes) or ray://HEAD:10001."
    ),
    slurm_partition: str | None = typer.Option(
        None, "--slurm-partition", help="Slurm partition of the jobs."
    ),
    slurm_time: int | None = typer.Option(
        None, "--slurm-time", help="Time limit of each job, minutes (240)."
    ),
    slurm_cpus: int | None = typer.Option(
        None, "--slurm-cpus", help="CPUs per job (default train.threads, 1 when 0)."
    ),
    slurm_mem_gb: float | None = typer.Option(None, "--slurm-mem-gb", help="Memory per job, GB."),
    slurm_cluster: str = typer.Option(
        "slurm",
        "--slurm-cluster",
        help="submitit's cluster: slurm, or local to run the jobs on this machine.",
    ),
) -> None:
    """Train every method with each domain held out, test on identical seeded episodes, write a report.

    A protocol with ``task: segmentation`` trains each segmenter per seed on its training structures and
    scores it on every test structure (docs/segmentation.md, configs/seg_*_bench.yaml).

    Writes OUT/results.jsonl (one record per finished cell; a killed run resumes where it stopped),
    OUT/summary.csv, OUT/report.md and the self-contained OUT/report.html (--report-only: from the
    cells finished so far, running nothing). With --workers N, N jobs
    run at once in child processes (same results when train.threads is set; only the overall bar and the
    running jobs are shown); --executor ray or slurm runs them on Ray actors or Slurm jobs instead.
    """
    from medmeta.bench import report, run
    from medmeta.bench.cells import (
        PretrainJob,
        ReferenceJob,
        TrainJob,
        enumerate_cells,
        enumerate_jobs,
        job_cost,
    )
    from medmeta.bench.jobs import class_counts, load_benchmark_domains
    from medmeta.bench.seg_protocol import SegProtocol, load_any_protocol
    from medmeta.bench.store import RESULTS, stored_fingerprint

    cluster = cluster_options(
        executor, ray_address, slurm_partition, slurm_time, slurm_cpus, slurm_mem_gb, slurm_cluster
    )
    protocol = load_any_protocol(config)
    out = out if out is not None else Path("runs") / "bench" / protocol.name
    if isinstance(protocol, SegProtocol):
        if cluster is not None:
            raise ConfigError(
                f"--executor {executor} runs classification benchmarks; a segmentation protocol runs on this "
                "machine: leave --executor out (--workers N for N jobs at once)"
            )
        from medmeta.cli.seg_benchmark_cmd import run_seg_benchmark_cli

        run_seg_benchmark_cli(
            protocol, out, data_dir, dry_run=dry_run, report_only=report_only, quiet=quiet, workers=workers
        )
        return
    domains = load_benchmark_domains(protocol, data_dir if data_dir is not None else protocol.data.data_dir)
    jobs = enumerate_jobs(protocol)
    n_cells = len(enumerate_cells(protocol))
    n_refs = sum(isinstance(j, ReferenceJob) for j in jobs)
    n_pre = sum(isinstance(j, PretrainJob) for j in jobs)
    n_train = sum(isinstance(j, TrainJob) and not j.method.frozen for j in jobs)
    ways = class_counts(domains)
    cost = sum(job_cost(protocol, j, ways) for j in jobs)
    pre = f" + {n_pre} self-supervised pretrainings" if n_pre else ""
    say(
        f"benchmark {protocol.name}: {n_cells} cells ({len(protocol.all_methods)} methods x "
        f"{len(protocol.held_out_domains)} held-out domains x {len(protocol.eval.shots)} shots x "
        f"{len(protocol.seeds)} seeds), {n_train} trainings + {n_refs} supervised references{pre}; "
        f"rough cost {_duration(cost)} on one CPU thread"
    )
    if dry_run or workers > 1 or cluster is not None:
        where = "" if cluster is None else f" on {executor}"
        say(
            f"{workers} worker{'s' if workers > 1 else ''}{where}: roughly {_duration(cost / workers)} wall "
            "time (rough: the cost divided by the workers, assuming a free core each)"
        )
    if (workers > 1 or cluster is not None) and not protocol.train.threads:
        say(
            "train.threads is 0: each worker uses 1 torch thread, so numbers can differ slightly from a "
            "one-process run with torch's default threads; set train.threads: 1 for identical results"
        )
    if dry_run:
        console.print(_plan_table(protocol, domains))
        if (out / RESULTS).is_file():
            _say_remaining(protocol, out, ways, n_cells, workers)
        return
    command = "medmeta " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    if report_only:
        partial = report(protocol, out, data_dir=data_dir, command=command, domains=domains)
        n_done = sum(r.get("kind") == "cell" for r in partial.outcome.records)
        say(f"{n_done} of {n_cells} cells finished in {out}; nothing run")
        console.print(_summary_table(partial.rows))
        say(f"wrote {partial.summary_csv}, {partial.report_md}, {partial.report_html}")
        return
    if (out / RESULTS).is_file() and stored_fingerprint(out) == protocol.fingerprint():
        say(f"resuming {out}: finished cells are kept, the rest is run")  # another config: run() refuses
    try:
        with BenchProgress(enabled=not quiet) as progress:
            result = run(
                protocol,
                out,
                data_dir=data_dir,
                progress=progress,
                command=command,
                workers=workers,
                domains=domains,
                executor=cluster,
            )
    except KeyboardInterrupt:  # typer would turn it into a silent exit 130
        report_interrupt(
            f"interrupted: finished cells are kept in {out / RESULTS}; run the same command to resume"
        )
        raise typer.Exit(130) from None
    o = result.outcome
    rerun = f", {o.jobs_rerun} jobs run again after their worker was lost" if o.jobs_rerun else ""
    say(
        f"{o.cells_run} cells run, {o.cells_skipped} reused from an earlier run, {o.trainings_run} trainings"
        f"{rerun}, {o.seconds:.0f} s"
    )
    console.print(_summary_table(result.rows))
    say(f"wrote {result.summary_csv}, {result.report_md}, {result.report_html}")


def cluster_options(
    executor: str,
    ray_address: str | None,
    slurm_partition: str | None,
    slurm_time: int | None,
    slurm_cpus: int | None,
    slurm_mem_gb: float | None,
    slurm_cluster: str,
) -> ClusterOptions | None:
    """The engine options the flags ask for (None: local processes).

    Raises:
        ConfigError: an unknown executor, or an option of another executor.
    """
    from medmeta.bench.executor import RayOptions, SlurmOptions

    slurm_flags = {
        "--slurm-partition": slurm_partition,
        "--slurm-time": slurm_time,
        "--slurm-cpus": slurm_cpus,
        "--slurm-mem-gb": slurm_mem_gb,
        "--slurm-cluster": None if slurm_cluster == "slurm" else slurm_cluster,
    }
    given = [
        flag for flag, value in {"--ray-address": ray_address, **slurm_flags}.items() if value is not None
    ]
    wrong = [f for f in given if not f.startswith(f"--{executor}-")]
    if executor not in ("local", "ray", "slurm"):
        raise ConfigError(f"--executor must be local, ray or slurm, got {executor!r}")
    if wrong:
        raise ConfigError(f"{wrong[0]} is an option of another executor than --executor {executor}: drop it")
    if executor == "ray":
        return RayOptions(address=ray_address)
    if executor == "slurm":
        if slurm_cluster not in ("slurm", "local"):
            raise ConfigError(f"--slurm-cluster must be slurm or local, got {slurm_cluster!r}")
        return SlurmOptions(
            partition=slurm_partition,
            time_min=240 if slurm_time is None else slurm_time,
            cpus=slurm_cpus,
            mem_gb=slurm_mem_gb,
            cluster="local" if slurm_cluster == "local" else "slurm",
        )
    return None


def _summary_table(rows: list[Any]) -> Table:
    from medmeta.bench.report import cell_text

    table = Table(title="accuracy % (95% CI); ▲ best, ≈ tied with the best")
    for col in ("method", "held out", "shots", "accuracy %", "bal. acc. %", "macro-F1 %", "AUC %", "ECE %"):
        table.add_column(col, justify="left" if col in ("method", "held out") else "right")
    for r in rows:
        mark = {"best": " ▲", "tie": " ≈"}.get(r.marks.get("accuracy", ""), "")
        table.add_row(
            r.method,
            r.domain,
            str(r.shots),
            cell_text(*r.metrics["accuracy"]) + mark,
            *(cell_text(*r.metrics[m]) for m in ("balanced_accuracy", "macro_f1", "auc", "ece")),
        )
    return table
