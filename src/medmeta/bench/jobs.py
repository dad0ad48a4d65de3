"""One benchmark job: its run config, its checkpoint folder, its training and its test cells.

`run_job` runs a job (a training and its cells, or a supervised reference) in whichever process it is
given and reports through a `JobSink`: `medmeta.bench.schedule` runs jobs in this process,
`medmeta.bench.runner` in a worker of any executor (child processes, Ray actors, Slurm jobs). Both import
this module; it imports neither.
Results do not depend on where a job runs: every training is seeded by its seed, test episodes by
``eval.seed + seed``, the global torch RNG is re-seeded before every evaluation, and cells are always
scored from the reloaded best checkpoint (``OUT/checkpoints/...``), whether it was trained in this
session or an earlier one.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Protocol as TypingProtocol

import torch

from medmeta.bench.calibration import validation_samplers, validation_temperature
from medmeta.bench.cells import (
    Job,
    PretrainJob,
    ReferenceJob,
    TrainJob,
    cell_cost,
    job_cost,
    safe_name,
)
from medmeta.bench.domains import DomainSplits, load_domains, query_size
from medmeta.bench.evaluation import evaluate_cell
from medmeta.bench.protocol import MethodEntry, Protocol, check_domains
from medmeta.bench.reference import train_reference
from medmeta.bench.store import ResultsStore
from medmeta.config import RunConfig, make_config, make_pretrain_config
from medmeta.data.transforms import Normalization
from medmeta.eval.spread import episodes_spread_scale
from medmeta.methods import METHODS
from medmeta.methods.base import FewShotMethod
from medmeta.outputs import remove_run_subfolder
from medmeta.pipeline import RunData, load_method, normalization_from_meta, train_method
from medmeta.pipeline.classification import (
    build_method_from_config,
    default_normalization,
    read_pretrained_start,
)
from medmeta.pipeline.pretrain import pretrain
from medmeta.train.loop import ProgressHook, resolve_device
from medmeta.train.self_supervised import UnlabelledImages

logger = logging.getLogger(__name__)


class RunProgress(ProgressHook, TypingProtocol):
    """Progress of a whole run (the CLI shows it with an ETA) plus the inner training/test bars."""

    def plan(self, total: float, done: float) -> None: ...

    def job(self, description: str) -> None:
        """The running job (with workers: one line per running job, empty when none runs)."""

    def job_done(self, units: float) -> None: ...


class JobSink(TypingProtocol):
    """Where a running job reports: finished records and progress (cost-model units)."""

    def record(self, record: dict[str, Any]) -> None: ...

    def advance(self, units: float) -> None: ...


@dataclass(frozen=True)
class Finished:
    """What an earlier session finished of one job: its training record and its finished cell keys."""

    train: dict[str, Any] | None = None
    cells: frozenset[str] = frozenset()


def max_ways(domains: dict[str, DomainSplits]) -> int:
    return max(max(d.train.n_classes, d.test.n_classes) for d in domains.values())


def method_options(entry: MethodEntry, domains: dict[str, DomainSplits]) -> dict[str, Any]:
    """The entry's options; methods with a fixed-size head get ``n_way`` = the most classes of any domain."""
    options = dict(entry.options)
    if "n_way" in METHODS[entry.name].Options.model_fields and "n_way" not in options:
        options["n_way"] = max_ways(domains)
    return options


def cell_config(
    protocol: Protocol, job: TrainJob, domains: dict[str, DomainSplits], out: Path | None = None
) -> RunConfig:
    """The run config of one training (its eval section is unused: cells set their own episodes).

    A method on a representation starts from that representation's pretraining checkpoint in `out`.
    """
    entry = job.method
    default_backbone = protocol.backbone
    weights = None
    if entry.representation is not None:
        rep = protocol.representation(entry.representation)
        default_backbone = rep.backbone or protocol.backbone
        if out is not None and job.needs is not None:
            weights = str(pretrain_dir(out, job.needs) / "best.json")
    return make_config(
        {
            "data": {
                "train": protocol.training_domains(job.domain),
                "image_size": protocol.data.image_size,
                "channels": protocol.data.channels,
                "allow_class_overlap": True,
            },
            "episodes": protocol.episodes.model_dump(),
            "model": entry.model_section(default_backbone, weights).model_dump(
                mode="json", exclude_none=True
            ),
            "method": {"name": job.method.name, "options": method_options(job.method, domains)},
            "train": protocol.train_config(job.method, job.seed).model_dump(),
        },
        source=f"benchmark cell {job.key}",
    )


def load_benchmark_domains(protocol: Protocol, root: str | Path | None) -> dict[str, DomainSplits]:
    """Load every domain of `protocol`, failing before any training on an unknown domain or on shots
    that a held-out domain's test classes cannot fill."""
    domains = load_domains(protocol, check_domains(protocol, root), root)
    for d in protocol.held_out_domains:
        for k in protocol.eval.shots:
            query_size(domains[d], k, protocol.eval.n_query)
    return domains


def class_counts(domains: dict[str, DomainSplits]) -> dict[str, int]:
    """Each domain's class count (the ways of its test episodes), for the cost model."""
    return {name: d.n_classes for name, d in domains.items()}


def eval_seed(protocol: Protocol, seed: int) -> int:
    return protocol.eval.seed + seed


def _rng_seed(key: str) -> int:
    return zlib.crc32(key.encode())


def pretrain_dir(out: Path, key: str) -> Path:
    """The run folder of the pretraining job `key` (``pretrain|NAME|SCOPE|SEED``)."""
    _, name, scope, seed = key.split("|")
    return out / "checkpoints" / "_pretrain" / safe_name(name) / safe_name(scope) / f"seed{seed}"


def _checkpoint_dir(out: Path, job: Job) -> Path:
    if isinstance(job, PretrainJob):
        return pretrain_dir(out, job.key)
    if isinstance(job, ReferenceJob):
        return out / "checkpoints" / "_reference" / safe_name(job.domain) / f"seed{job.seed}"
    return out / "checkpoints" / safe_name(job.method.label) / safe_name(job.domain) / f"seed{job.seed}"


def describe(job: Job) -> str:
    """One line naming a job (progress display)."""
    if isinstance(job, PretrainJob):
        return f"pretrain {job.representation.name} on {', '.join(job.domains)}, seed {job.seed}"
    if isinstance(job, ReferenceJob):
        return f"supervised reference on {job.domain}, seed {job.seed}"
    return f"{job.method.label} with {job.domain} held out, seed {job.seed}"


def finished_part(job: Job, store: ResultsStore) -> Finished:
    """What `store` holds of `job` (a resumed job needs its training record and finished cells)."""
    if not isinstance(job, TrainJob):
        return Finished()
    keys = store.keys()
    return Finished(store.get(job.key), frozenset(c.key for c in job.cells if c.key in keys))


def _trained_method(
    protocol: Protocol,
    job: TrainJob,
    domains: dict[str, DomainSplits],
    finished: Finished,
    out: Path,
    sink: JobSink,
    progress: RunProgress | None,
) -> Path:
    """The best checkpoint of `job`'s training: reused when an earlier session finished it."""
    ckpt_dir = _checkpoint_dir(out, job)
    done = finished.train
    if done is not None and (out / done["checkpoint"]).is_file():
        return out / done["checkpoint"]
    remove_run_subfolder(out, ckpt_dir)  # a training cut short starts again
    cfg = cell_config(protocol, job, domains, out)
    train_names = protocol.training_domains(job.domain)
    data = RunData(
        train=[domains[d].train for d in train_names], val=[domains[d].val for d in train_names], test=[]
    )
    _, fit_result, _ = train_method(cfg, out_dir=ckpt_dir, data=data, progress=progress, resumable=False)
    assert fit_result.best_checkpoint is not None
    sink.record(
        {
            "kind": "train",
            "key": job.key,
            "method": job.method.label,
            "domain": job.domain,
            "seed": job.seed,
            "train_domains": train_names,
            "history": fit_result.history,
            "best_val_accuracy": fit_result.best_score,
            "seconds": fit_result.seconds,
            "checkpoint": str(fit_result.best_checkpoint.relative_to(out)),
        }
    )
    return fit_result.best_checkpoint


def _run_train_job(
    protocol: Protocol,
    job: TrainJob,
    domains: dict[str, DomainSplits],
    finished: Finished,
    out: Path,
    sink: JobSink,
    progress: RunProgress | None,
) -> None:
    if job.method.frozen:
        method, prepare = _frozen_method(protocol, job, domains, out)
    else:
        checkpoint = _trained_method(protocol, job, domains, finished, out, sink, progress)
        method, _, meta = load_method(checkpoint)
        prepare = normalization_from_meta(meta)
    ways = class_counts(domains)
    sink.advance(
        job_cost(protocol, job, ways) - sum(cell_cost(protocol, job, c.shots, ways) for c in job.cells)
    )
    device = resolve_device(protocol.train.device)
    method.to(device)
    test = domains[job.domain].test
    for cell in job.cells:
        if cell.key in finished.cells:
            continue
        n_query = query_size(domains[job.domain], cell.shots, protocol.eval.n_query)
        if progress is not None:
            progress.start(f"test {cell.method} on {cell.domain} {cell.shots}-shot", protocol.eval.episodes)
        torch.manual_seed(_rng_seed(cell.key))
        t0 = time.perf_counter()
        temperature, spread_scale = _validation_calibration(
            protocol, job, domains, cell.shots, cell.seed, method, prepare, device
        )
        torch.manual_seed(_rng_seed(cell.key))
        try:
            fields = evaluate_cell(
                method,
                test,
                n_shot=cell.shots,
                n_query=n_query,
                episodes=protocol.eval.episodes,
                seed=eval_seed(protocol, cell.seed),
                prepare=prepare,
                device=device,
                progress=None if progress is None else (lambda _d, _t: progress.advance(1)),
                temperature=temperature,
                loo_episodes=protocol.eval.loo_episodes,
                spread_scale=spread_scale,
            )
        finally:
            if progress is not None:
                progress.stop()
        sink.record(
            {
                "kind": "cell",
                "key": cell.key,
                "method": cell.method,
                "method_name": job.method.name,
                "domain": cell.domain,
                "shots": cell.shots,
                "seed": cell.seed,
                **fields,
                "seconds": time.perf_counter() - t0,
            }
        )
        sink.advance(cell_cost(protocol, job, cell.shots, ways))


def _validation_calibration(
    protocol: Protocol,
    job: TrainJob,
    domains: dict[str, DomainSplits],
    shots: int,
    seed: int,
    method: FewShotMethod,
    prepare: Normalization,
    device: torch.device,
) -> tuple[float | None, float | None]:
    """A cell's temperature and spread scale, both fitted on the same episodes of the training domains'
    validation images (`medmeta.bench.calibration`); the spread scale only when leave-one-out is scored."""
    samplers = validation_samplers(
        [domains[d].val for d in protocol.training_domains(job.domain)],
        n_shot=shots,
        n_query=protocol.eval.n_query,
        episodes=protocol.eval.calibration_episodes,
        seed=eval_seed(protocol, seed) + 1_000_003,
    )
    temperature = validation_temperature(method, samplers, prepare=prepare, device=device)
    spread_scale = (
        episodes_spread_scale(method, samplers, prepare=prepare, device=device)
        if protocol.eval.loo_episodes
        else None
    )
    return temperature, spread_scale


def _frozen_method(
    protocol: Protocol, job: TrainJob, domains: dict[str, DomainSplits], out: Path
) -> tuple[FewShotMethod, Normalization]:
    """A ``frozen`` entry's method: its representation (or raw pixels, or library weights) as it is, seeded."""
    cfg = cell_config(protocol, job, domains, out)
    torch.manual_seed(_rng_seed(job.key))
    channels = protocol.data.channels
    method = build_method_from_config(
        cfg, channels=channels, spatial_dims=2, start=read_pretrained_start(cfg.model.weights)
    )
    return method.eval(), default_normalization(channels)


def _run_pretrain_job(
    protocol: Protocol,
    job: PretrainJob,
    domains: dict[str, DomainSplits],
    out: Path,
    sink: JobSink,
    progress: RunProgress | None,
) -> None:
    """Pretrain the representation on the unlabelled training and validation images of `job.domains`."""
    folder = _checkpoint_dir(out, job)
    remove_run_subfolder(out, folder)  # a pretraining cut short starts again
    rep = job.representation
    raw = rep.pretrain_section(protocol.backbone, protocol.data.image_size, protocol.data.channels, job.seed)
    raw["data"]["domains"] = list(job.domains)
    raw["train"].setdefault("threads", protocol.train.threads)
    raw["train"].setdefault("device", protocol.train.device)
    cfg = make_pretrain_config(raw, source=f"benchmark job {job.key}")
    datasets = [part for d in job.domains for part in (domains[d].train, domains[d].val)]
    images = UnlabelledImages.build(datasets, max_images=rep.max_images, seed=job.seed)
    _, result, images = pretrain(cfg, out_dir=folder, images=images, progress=progress, resumable=False)
    sink.record(
        {
            "kind": "pretrain",
            "key": job.key,
            "representation": rep.name,
            "ssl": rep.ssl,
            "scope": job.scope,
            "domains": list(job.domains),
            "seed": job.seed,
            "images": len(images),
            "history": result.history,
            "seconds": result.seconds,
            "checkpoint": str((folder / "best.json").relative_to(out)),
        }
    )
    sink.advance(job_cost(protocol, job, class_counts(domains)))


def run_job(
    protocol: Protocol,
    job: Job,
    domains: dict[str, DomainSplits],
    finished: Finished,
    out: Path,
    sink: JobSink,
    progress: RunProgress | None = None,
) -> None:
    """Run one job (skipping its `finished` part); records and progress go to `sink`.

    `progress` gets the inner training/test bars (None in a worker process).
    """
    if isinstance(job, PretrainJob):
        _run_pretrain_job(protocol, job, domains, out, sink, progress)
        return
    if isinstance(job, ReferenceJob):
        ckpt_dir = _checkpoint_dir(out, job)
        remove_run_subfolder(out, ckpt_dir)  # a reference cut short is trained again from scratch
        fields = train_reference(
            protocol,
            domains[job.domain],
            job.seed,
            ckpt_dir,
            progress=progress,
            episode_seed=eval_seed(protocol, job.seed),
        )
        sink.record({"kind": "reference", "key": job.key, "domain": job.domain, "seed": job.seed, **fields})
        sink.advance(job_cost(protocol, job, class_counts(domains)))
        return
    _run_train_job(protocol, job, domains, finished, out, sink, progress)
