"""From a `FederatedConfig` to the table: the Python API behind ``medmeta federated``.

Every federated strategy runs as one Flower job on the chosen engine; with ``dp.epsilon`` set, each
strategy of ``dp.strategies`` runs twice more with group norm: without noise (the reference at
epsilon = infinity) and with DP-SGD (`medmeta.federated.dp`). Then the centralised and site-only
references run in this process. After every row the report is rewritten.

Example:
    >>> from medmeta.config.federated import make_federated_config
    >>> cfg = make_federated_config({"data": {"sites": ["breastmnist_resaved", "pneumoniamnist_modified"]}})
    >>> result = run_federated(cfg, out=Path("runs/fed"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medmeta._optional import optional_import
from medmeta.config.federated import STRATEGY_LEARNER, Engine, FederatedConfig
from medmeta.errors import ConfigError, OutputError
from medmeta.federated.baselines import centralised, site_only
from medmeta.federated.protocol import Job
from medmeta.federated.report import OUTPUT_FILES, OWN_FILE, write_report
from medmeta.federated.sites import Site, load_site, query_size
from medmeta.outputs import check_output_file, claim_output_folder, write_text_atomic
from medmeta.provenance import run_stamp


def check_federated_folder(out: Path, *, overwrite: bool = False) -> Path:
    """The output folder must be new, empty, or (with `overwrite`) hold only an earlier run's files.

    Raises:
        OutputError: a link, special file or file at `out`; foreign files; an earlier run without `overwrite`.
    """
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputError(f"--out {out} is not a folder: give a new or empty folder")
    entries = sorted(os.listdir(out)) if out.exists() else []
    foreign = [e for e in entries if not OWN_FILE.fullmatch(e)]
    if foreign:
        raise OutputError(
            f"--out {out} holds files medmeta federated did not write ({', '.join(foreign[:3])}): give a new or empty folder"
        )
    if entries and not overwrite:
        raise OutputError(
            f"--out {out} already holds a federated run ({', '.join(entries)}): pass --overwrite to replace it"
        )
    for name in entries:
        if name != ".work":
            check_output_file(out / name, overwrite=True)
    work = out / ".work"
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise OutputError(f"{work} is not a folder this command made: remove it")
    return out


def plan_jobs(cfg: FederatedConfig, sites: list[Site] | None) -> list[Job]:
    """The Flower jobs of a run, in report order (DP noise is chosen per site from the target epsilon).

    Raises:
        OptionalDependencyError: DP asked and Opacus missing.
    """
    data = cfg.model_dump(mode="json")
    jobs = [
        Job(s, STRATEGY_LEARNER[s], cfg.train.mu if s == "fedprox" else None, "batch", None, data)
        for s in cfg.strategies
    ]
    eps = cfg.dp.epsilon
    if eps is not None:
        if sites is None:
            raise ConfigError(
                "DP needs each site's number of training images to set its noise: run with local data"
            )
        from medmeta.federated.dp import noise_for

        steps = cfg.train.rounds * cfg.train.local_steps
        dp: dict[str, dict[str, float]] = {}
        for site in sites:
            delta = cfg.dp.delta or 1.0 / len(site.train)
            rate = min(1.0, cfg.train.batch_size / len(site.train))
            dp[site.name] = {
                "noise_multiplier": noise_for(eps, delta, rate, steps),
                "max_grad_norm": cfg.dp.max_grad_norm,
                "delta": delta,
            }
        for s in cfg.dp.strategies:
            mu = cfg.train.mu if s == "fedprox" else None
            jobs.append(Job(f"{s}+groupnorm", STRATEGY_LEARNER[s], mu, "group", None, data))
            jobs.append(Job(f"{s}+dp", STRATEGY_LEARNER[s], mu, "group", dp, data))
    return jobs


@dataclass
class FederatedResult:
    """A finished run: every row's result dict (`medmeta.federated.protocol.serve`) and the files written."""

    config: FederatedConfig
    rows: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def run_federated(
    cfg: FederatedConfig,
    *,
    out: Path,
    overwrite: bool = False,
    command: str = "",
    on_row: Callable[[dict[str, Any]], None] | None = None,
    server_env: dict[str, str] | None = None,
) -> FederatedResult:
    """Check everything, run every strategy and reference, write ``OUT/config.yaml`` and the report.

    Args:
        cfg: the run.
        out: the output folder (`check_federated_folder`).
        overwrite: replace an earlier run in `out`.
        command: recorded in the report.
        on_row: called with each finished row.
        server_env: environment of the SuperLink (processes engine; default: this one without MEDMETA_DATA).

    Raises:
        OutputError: `out` may not be used.
        DataError, ConfigError: an unknown site, a test class too small for the shots.
        OptionalDependencyError: flwr (or Opacus for DP) is not installed.
    """
    check_federated_folder(out, overwrite=overwrite)
    if cfg.strategies or cfg.dp.epsilon is not None:  # a missing extra fails before any image is read
        optional_import("flwr", "federated learning (Flower)")
    if cfg.dp.epsilon is not None:
        optional_import("opacus", "differential privacy of site updates (Opacus)")
    sites = [load_site(name, cfg.data) for name in cfg.data.sites]
    for site in sites:
        for k in cfg.eval.shots:
            query_size(site, k, cfg.eval.n_query)
    jobs = plan_jobs(cfg, sites)
    claim_output_folder(out, overwrite=True)
    write_text_atomic(out / OUTPUT_FILES[0], yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    result = FederatedResult(cfg)
    meta = {
        **run_stamp(command),
        "engine": cfg.engine,
        "config": cfg.model_dump(mode="json"),
        "sites": {
            s.name: {
                "classes": list(s.train.class_names),
                "train_images": len(s.train),
                "test_images": len(s.test),
                "test_source": s.test_source,
            }
            for s in sites
        },
    }
    t0 = time.perf_counter()

    def finish(row: dict[str, Any], seconds: float) -> None:
        row["seconds"] = round(seconds, 1)
        result.rows.append(row)
        result.files = write_report(out, result.rows, cfg.data.sites, cfg.eval.shots, meta)
        if on_row is not None:
            on_row(row)

    for job in jobs:
        t = time.perf_counter()
        finish(
            _run_job(job, out / ".work" / job.strategy.replace("/", "_"), cfg.engine, cfg, server_env),
            time.perf_counter() - t,
        )
    for learner in cfg.centralised:
        t = time.perf_counter()
        finish(centralised(learner, sites, cfg), time.perf_counter() - t)
    for learner in cfg.site_only:
        t = time.perf_counter()
        finish(site_only(learner, sites, cfg), time.perf_counter() - t)
    result.seconds = time.perf_counter() - t0
    return result


def _run_job(
    job: Job, work: Path, engine: Engine, cfg: FederatedConfig, server_env: dict[str, str] | None
) -> dict[str, Any]:
    from medmeta.federated.engines import run_in_processes, run_in_simulation

    work.mkdir(parents=True, exist_ok=True)
    result = work / "result.json"
    if result.exists():
        result.unlink()
    threads = cfg.train.threads or 1
    if engine == "processes":
        return run_in_processes(
            job,
            result,
            work=work,
            data_dir=cfg.data.data_dir or os.environ.get("MEDMETA_DATA"),
            threads=threads,
            server_env=server_env,
        )
    return run_in_simulation(job, result, data_dir=cfg.data.data_dir, threads=threads)
