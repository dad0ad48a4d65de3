"""``medmeta benchmark CONFIG`` for a protocol with ``task: segmentation`` (`medmeta.bench.seg_protocol`)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer
from rich.table import Table

from medmeta.bench.seg_protocol import SegProtocol
from medmeta.cli.ui import console, report_interrupt, say


def run_seg_benchmark_cli(
    protocol: SegProtocol,
    out: Path,
    data_dir: Path | None,
    *,
    dry_run: bool,
    report_only: bool,
    quiet: bool,
    workers: int,
) -> None:
    """Plan, run or report a segmentation benchmark; prints the Dice table and the files written."""
    from medmeta.bench.seg_report import seg_summarize, write_seg_report
    from medmeta.bench.seg_run import in_job_order, load_benchmark_structures, run_seg_benchmark, seg_jobs
    from medmeta.bench.store import RESULTS, ResultsStore, check_fingerprint, stored_fingerprint
    from medmeta.cli.benchmark_cmd import BenchProgress
    from medmeta.errors import ConfigError

    root = str(data_dir) if data_dir is not None else protocol.data.data_dir
    data = load_benchmark_structures(protocol, root)
    structures = sorted(data.test)
    jobs = seg_jobs(protocol, structures)
    n_cells = sum(len(j.cells) for j in jobs)
    n_train = sum(j.method.trained for j in jobs)
    say(
        f"segmentation benchmark {protocol.name}: {n_cells} cells ({len(protocol.all_methods)} methods x "
        f"{len(structures)} test structures x {len(protocol.eval.shots)} shots x {len(protocol.seeds)} seeds), "
        f"{n_train} trainings"
    )
    if dry_run:
        table = Table(title=f"{protocol.name}: jobs")
        for col in ("seed", "method", "trained on", "tested on", "shots"):
            table.add_column(col)
        for j in jobs:
            trained = ", ".join(protocol.data.train) if j.method.trained else "nothing (baseline)"
            table.add_row(
                str(j.seed), j.method.label, trained, ", ".join(structures), str(protocol.eval.shots)
            )
        console.print(table)
        if (out / RESULTS).is_file():
            same = stored_fingerprint(out) == protocol.fingerprint()
            keys = ResultsStore(out, repair=False).keys()
            done = sum(j.cell_key(*c) in keys for j in jobs for c in j.cells)
            say(
                f"{out} already holds {done} of {n_cells} cells"
                if same
                else f"{out} holds another config's results"
            )
        return
    command = "medmeta " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    if report_only:
        store = ResultsStore(out, repair=False)
        if not store.records:
            raise ConfigError(f"no results in {out}: run `medmeta benchmark CONFIG --out {out}` first")
        check_fingerprint(out, protocol.fingerprint(), protocol.as_config())
        records = in_job_order(store.records, jobs)
    else:
        if (out / RESULTS).is_file() and stored_fingerprint(out) == protocol.fingerprint():
            say(f"resuming {out}: finished cells are kept, the rest is run")
        try:
            with BenchProgress(enabled=not quiet) as progress:
                progress.plan(float(n_cells), 0.0)
                outcome = run_seg_benchmark(
                    protocol,
                    out,
                    data_dir=root,
                    progress=progress,
                    on_job=progress.job,
                    on_record=lambda r: progress.job_done(1.0) if r["kind"] == "cell" else None,
                    workers=workers,
                )
        except KeyboardInterrupt:
            report_interrupt(
                f"interrupted: finished cells are kept in {out / RESULTS}; run the same command to resume"
            )
            raise typer.Exit(130) from None
        say(
            f"{outcome.cells_run} cells run, {outcome.cells_skipped} reused from an earlier run, "
            f"{outcome.trainings_run} trainings, {outcome.seconds:.0f} s"
        )
        records = outcome.records
    rows = seg_summarize(protocol, records, structures)
    paths = write_seg_report(
        protocol, rows, structures, out, command or f"medmeta benchmark CONFIG --out {out}"
    )
    table = Table(title="Dice % (95% CI); ▲ best, ≈ tied with the best")
    for col in ("method", "structure", "shots", "Dice %", "HD95 px"):
        table.add_column(col, justify="left" if col in ("method", "structure") else "right")
    for r in rows:
        mark = {"best": " ▲", "tie": " ≈"}.get(r.mark, "")
        dice = r.note or f"{100 * r.dice[0]:.1f} ± {100 * r.dice[1]:.1f}{mark}"
        table.add_row(r.method, r.structure, str(r.shots), dice, f"{r.hd95[0]:.1f} ± {r.hd95[1]:.1f}")
    console.print(table)
    say("wrote " + ", ".join(str(p) for p in paths))
