"""Run a segmentation benchmark (`SegProtocol`): every segmenter trained per seed, scored on every test
structure and number of shots, resumable, in this process or in worker processes.

A job is one (method, seed): its training (none for a baseline) and its cells, one per (test structure,
shots). Records go to ``OUT/results.jsonl`` (`medmeta.bench.store`) as in the classification benchmark:
``train`` (history, best validation Dice, checkpoint) and ``cell`` (per-episode Dice and HD95). Cells are
always scored from the reloaded best checkpoint, on episodes seeded ``eval.seed + seed`` only, with the
global torch RNG re-seeded first, so a resumed run, or one with workers, gives the same numbers.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medmeta.bench.cells import safe_name
from medmeta.bench.seg_protocol import SegMethodEntry, SegProtocol
from medmeta.bench.store import ResultsStore, check_fingerprint
from medmeta.errors import ConfigError
from medmeta.eval.segmentation import evaluate_structure_episodes
from medmeta.methods.segmentation.base import FewShotSegmenter
from medmeta.outputs import remove_run_subfolder
from medmeta.pipeline.segmentation import SegData, load_seg_data, load_segmenter, train_segmenter
from medmeta.pipeline.segmentation_run import plan_seg_training
from medmeta.provenance import code_version
from medmeta.tasks.segmentation import SegEpisodeSampler
from medmeta.train.loop import ProgressHook


@dataclass(frozen=True)
class SegJob:
    """One method trained with one seed, and the (structure, shots) cells it is scored on."""

    method: SegMethodEntry
    seed: int
    cells: tuple[tuple[str, int], ...]

    @property
    def key(self) -> str:
        return f"train|{self.method.label}|{self.seed}"

    def cell_key(self, structure: str, shots: int) -> str:
        return f"cell|{self.method.label}|{structure}|{shots}|{self.seed}"

    def describe(self) -> str:
        return f"{self.method.label}, seed {self.seed}"


@dataclass
class SegOutcome:
    """What `run_seg_benchmark` did (`records`: every record of the folder, in job order)."""

    out: Path
    records: list[dict[str, Any]]
    resumed: bool
    cells_run: int = 0
    cells_skipped: int = 0
    trainings_run: int = 0
    seconds: float = 0.0
    structures: list[str] = field(default_factory=list)


def seg_jobs(protocol: SegProtocol, structures: list[str]) -> list[SegJob]:
    """Every job, seeds outermost; each with every (structure, shots) cell."""
    cells = tuple((s, k) for s in structures for k in protocol.eval.shots)
    return [SegJob(m, seed, cells) for seed in protocol.seeds for m in protocol.all_methods]


def load_benchmark_structures(protocol: SegProtocol, data_dir: str | None) -> SegData:
    """The protocol's training and test structures (the same for every method and seed)."""
    cfg = protocol.run_config(protocol.all_methods[0], protocol.seeds[0], data_dir)
    data = load_seg_data(cfg, with_train=any(m.trained for m in protocol.all_methods))
    if not data.test:
        raise ConfigError(f"data.test {protocol.data.test} names no structure with samples: check the specs")
    return data


def checkpoint_dir(out: Path, job: SegJob) -> Path:
    return out / "checkpoints" / safe_name(job.method.label) / f"seed{job.seed}"


def _segmenter(
    protocol: SegProtocol,
    job: SegJob,
    data: SegData,
    data_dir: str | None,
    out: Path,
    trained: dict[str, Any] | None,
    emit: Callable[[dict[str, Any]], None],
    progress: ProgressHook | None,
) -> FewShotSegmenter:
    """The job's segmenter: a baseline, the checkpoint an earlier session trained, or trained now."""
    from medmeta.methods.segmentation import SEG_METHODS

    if not job.method.trained:
        return SEG_METHODS[job.method.name].from_options(job.method.options).eval()
    if trained is not None and (out / trained["checkpoint"]).is_file():
        return load_segmenter(out / trained["checkpoint"])[0]
    ckpt_dir = checkpoint_dir(out, job)
    remove_run_subfolder(out, ckpt_dir)  # a training cut short starts again
    run = plan_seg_training(protocol.run_config(job.method, job.seed, data_dir), data)
    result = train_segmenter(
        run.model,
        run.episodes,
        run.cfg.train,
        val_episodes=run.val_episodes,
        out_dir=ckpt_dir,
        meta=run.meta,
        progress=progress,
    )
    if result.best_checkpoint is None:
        raise ConfigError(f"training '{job.method.label}' wrote no checkpoint: check its train section")
    emit(
        {
            "kind": "train",
            "key": job.key,
            "method": job.method.label,
            "seed": job.seed,
            "history": result.history,
            "best_val_dice": result.best_score,
            "seconds": result.seconds,
            "checkpoint": str(result.best_checkpoint.relative_to(out)),
        }
    )
    return load_segmenter(result.best_checkpoint)[0]


def run_seg_job(
    protocol: SegProtocol,
    job: SegJob,
    data: SegData,
    data_dir: str | None,
    out: Path,
    done: frozenset[str],
    trained: dict[str, Any] | None,
    emit: Callable[[dict[str, Any]], None],
    progress: ProgressHook | None = None,
) -> None:
    """Train (or reload) `job`'s segmenter and score its cells not in `done`, emitting each record."""
    model = _segmenter(protocol, job, data, data_dir, out, trained, emit, progress)
    e = protocol.eval
    for structure, shots in job.cells:
        key = job.cell_key(structure, shots)
        if key in done:
            continue
        s = data.test[structure]
        record: dict[str, Any] = {
            "kind": "cell",
            "key": key,
            "method": job.method.label,
            "structure": structure,
            "shots": shots,
            "seed": job.seed,
            "n_query": e.n_query,
        }
        if len(s) < shots + e.n_query:
            emit({**record, "episodes": 0, "note": f"only {len(s)} samples, {shots + e.n_query} needed"})
            continue
        torch.manual_seed(e.seed + job.seed)
        sampler = SegEpisodeSampler({structure: s}, shots, e.n_query, e.seed + job.seed)
        if progress is not None:
            progress.start(f"{job.method.label} on {structure}, {shots}-shot", e.episodes)
        t0 = time.perf_counter()
        values = evaluate_structure_episodes(model, sampler, e.episodes)
        if progress is not None:
            progress.advance(e.episodes)
            progress.stop()
        emit({**record, "episodes": e.episodes, "per_episode": values, "seconds": time.perf_counter() - t0})


def _job_in_child(
    protocol: SegProtocol, job: SegJob, data_dir: str | None, out: str, done: frozenset[str],
    trained: dict[str, Any] | None, threads: int,
) -> list[dict[str, Any]]:  # fmt: skip
    torch.set_num_threads(threads)
    data = load_benchmark_structures(protocol, data_dir)
    records: list[dict[str, Any]] = []
    run_seg_job(protocol, job, data, data_dir, Path(out), done, trained, records.append)
    return records


def run_seg_benchmark(
    protocol: SegProtocol,
    out: str | Path,
    *,
    data_dir: str | None = None,
    progress: ProgressHook | None = None,
    on_job: Callable[[str], None] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    workers: int = 1,
) -> SegOutcome:
    """Run (or resume) every job of `protocol` in `out`.

    Args:
        data_dir: data root (default ``protocol.data.data_dir``, else ``$MEDMETA_DATA``).
        progress: training and scoring bars (this process only).
        on_job: told each job as it starts (this process) or is submitted (workers).
        on_record: called after each record is written (tests use it to interrupt a run).
        workers: jobs at once, each in its own process with ``train.threads`` (1 when 0) torch threads;
            its records are written when the job ends.

    Raises:
        ConfigError: `out` holds another protocol's results, an unknown structure, or `workers` < 1.
    """
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}: pass --workers 1 or more")
    start = time.perf_counter()
    code_version()
    out = Path(out)
    root = data_dir if data_dir is not None else protocol.data.data_dir
    data = load_benchmark_structures(protocol, root)
    resumed = check_fingerprint(out, protocol.fingerprint(), protocol.as_config())
    store = ResultsStore(out)
    structures = sorted(data.test)
    outcome = SegOutcome(out=out, records=[], resumed=resumed, structures=structures)
    jobs = seg_jobs(protocol, structures)

    def emit(record: dict[str, Any]) -> None:
        store.append(record)
        if record["kind"] == "train":
            outcome.trainings_run += 1
        else:
            outcome.cells_run += 1
        if on_record is not None:
            on_record(record)

    pending = []
    keys = store.keys()
    done = frozenset(k for k in keys if k.startswith("cell|"))
    for job in jobs:
        left = [c for c in job.cells if job.cell_key(*c) not in done]
        outcome.cells_skipped += len(job.cells) - len(left)
        if left:
            pending.append((job, done, store.get(job.key)))
    if workers == 1:
        if protocol.train.threads:
            torch.set_num_threads(protocol.train.threads)
        for job, done, trained in pending:
            if on_job is not None:
                on_job(job.describe())
            run_seg_job(protocol, job, data, root, out, done, trained, emit, progress)
    else:
        for records in _in_workers(protocol, pending, root, out, workers, on_job):
            for record in records:
                emit(record)
    outcome.records = in_job_order(store.records, jobs)
    outcome.seconds = time.perf_counter() - start
    return outcome


def _in_workers(
    protocol: SegProtocol,
    pending: list[tuple[SegJob, frozenset[str], dict[str, Any] | None]],
    root: str | None,
    out: Path,
    workers: int,
    on_job: Callable[[str], None] | None,
) -> Iterator[list[dict[str, Any]]]:
    """Each pending job's records as it finishes in a worker process (spawned: no state inherited)."""
    threads = protocol.train.threads or 1
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        running: set[Future[list[dict[str, Any]]]] = set()
        try:
            for job, done, trained in pending:
                if on_job is not None:
                    on_job(job.describe())
                running.add(pool.submit(_job_in_child, protocol, job, root, str(out), done, trained, threads))
            while running:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    yield f.result()
        except BaseException:
            for f in running:
                f.cancel()
            raise


def in_job_order(records: list[dict[str, Any]], jobs: list[SegJob]) -> list[dict[str, Any]]:
    """`records` sorted by job (its training first, then its cells), whatever order workers finished in."""
    rank: dict[str, int] = {}
    for job in jobs:
        rank[job.key] = len(rank)
        for c in job.cells:
            rank[job.cell_key(*c)] = len(rank)
    return sorted(records, key=lambda r: rank.get(r.get("key", ""), len(rank)))
