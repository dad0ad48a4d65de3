"""From a `RunConfig` to a trained, evaluated method: the Python API behind ``medmeta train/evaluate``.

Example:
    >>> from medmeta.config import make_config
    >>> from medmeta.pipeline import train_method
    >>> cfg = make_config({"data": {"train": ["synthetic"], "test": ["synthetic@test"]},
    ...                    "train": {"epochs": 1, "episodes_per_epoch": 5, "val_episodes": 2},
    ...                    "eval": {"episodes": 5, "n_way": 5}, "data.allow_class_overlap": True})
    ... # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from medmeta import __version__
from medmeta.config import RunConfig, make_config
from medmeta.data.datasets import ImageDataset
from medmeta.data.registry import DomainSpec, resolve
from medmeta.data.transforms import Normalization
from medmeta.errors import CheckpointError, ConfigError, DataError
from medmeta.eval.evaluate import AccuracyValidation, EvalResult, evaluate
from medmeta.eval.spread import episodes_spread_scale
from medmeta.methods import METHODS, build_method
from medmeta.methods.base import FewShotMethod
from medmeta.models.factory import PretrainedStart, make_backbone, names_pretrain_checkpoint
from medmeta.outputs import RunFolder, check_run_folder
from medmeta.pipeline.checks import check_method_config
from medmeta.tasks.sampler import EpisodeSampler, MultiDomainSampler
from medmeta.train.checkpoint import amend_checkpoint, load_checkpoint, load_state_strictly
from medmeta.train.distributed import Distributed
from medmeta.train.loop import FitResult, ProgressHook, fit, resolve_device
from medmeta.train.sources import EpisodicBatches

logger = logging.getLogger(__name__)


def default_normalization(channels: int) -> Normalization:
    return Normalization(mean=(0.5,) * channels, std=(0.25,) * channels)


@dataclass
class RunData:
    """The datasets of a run, loaded and split."""

    train: list[ImageDataset]
    val: list[ImageDataset]
    test: list[ImageDataset]
    test_specs: list[DomainSpec] = field(default_factory=list)


def load_domain(spec: DomainSpec, cfg: RunConfig) -> ImageDataset:
    """Load one domain spec at the run's image size and channels."""
    return spec.load(
        root=cfg.data.data_dir,
        image_size=cfg.data.image_size,
        channels=cfg.data.channels,
        skip_bad=cfg.data.skip_bad,
        dedupe=cfg.data.dedupe,
    )


def _check_overlap(train_specs: list[DomainSpec], train: list[ImageDataset], cfg: RunConfig) -> None:
    if cfg.data.allow_class_overlap:
        return
    seen: dict[str, set[str]] = {}
    for spec, ds in zip(train_specs, train, strict=True):
        seen.setdefault(resolve(spec.name, cfg.data.data_dir).name, set()).update(ds.class_names)
    for text in cfg.data.test:
        spec = DomainSpec.parse(text)
        shared = seen.get(resolve(spec.name, cfg.data.data_dir).name, set())
        if not shared:
            continue
        wanted = set(spec.classes) if spec.classes else None
        test_classes = wanted if wanted is not None else set(load_domain(spec, cfg).class_names)
        both = sorted(shared & test_classes)
        if both:
            raise ConfigError(
                f"test domain '{spec}' shares class(es) {both} with training: few-shot testing needs "
                "unseen classes; list disjoint classes (NAME:CLASS,...) or set data.allow_class_overlap"
            )


def load_run_data(cfg: RunConfig) -> RunData:
    """Load training, validation and test datasets as configured.

    Validation is the ``data.val`` domains, else a held-out ``data.val_fraction`` of each training
    domain's images (by patient when patient ids exist).
    """
    train_specs = [DomainSpec.parse(t) for t in cfg.data.train]
    loaded = [load_domain(s, cfg) for s in train_specs]
    _check_overlap(train_specs, loaded, cfg)
    if cfg.data.val:
        train = loaded
        val = [load_domain(DomainSpec.parse(v), cfg) for v in cfg.data.val]
    else:
        train, val = [], []
        for ds in loaded:
            rest, held = ds.split_holdout(cfg.data.val_fraction, seed=cfg.train.seed)
            train.append(rest)
            val.append(held)
    test_specs = [DomainSpec.parse(t) for t in cfg.data.test]
    test = [load_domain(s, cfg) for s in test_specs]
    return RunData(train=train, val=val, test=test, test_specs=test_specs)


def check_test_episodes(cfg: RunConfig, test_sets: list[ImageDataset]) -> None:
    """Refuse test domains too small for the configured test episodes (before any training).

    Raises:
        DataError: a test domain with fewer classes than ``eval.n_way`` (or than 2), or a class with fewer
            than ``eval.n_shot + eval.n_query`` images.
    """
    e = cfg.eval
    for ds in test_sets:
        n_way = ds.n_classes if e.n_way is None else e.n_way
        if ds.n_classes < max(n_way, 2):
            raise DataError(
                f"test domain {ds.display_name} has {ds.n_classes} class(es), fewer than eval.n_way="
                f"{max(n_way, 2)}: lower --eval-n-way or test on a domain with more classes"
            )
        need = e.n_shot + e.n_query
        small = [(name, n) for name, n in ds.class_counts().items() if n < need]
        if small:
            listed = ", ".join(f"'{name}' has {n} images" for name, n in small[:3])
            raise DataError(
                f"test domain {ds.display_name}: {listed}, fewer than eval.n_shot + eval.n_query = "
                f"{e.n_shot} + {e.n_query}: lower --eval-n-shot or eval.n_query"
            )


def _write_config(folder: RunFolder, cfg: RunConfig) -> None:
    """The earlier run's files go (overwrite) or its stale results (resume); the run's config is written."""
    folder.clear()
    path = folder.path / "config.yaml"
    tmp = path.with_name(f".config.yaml.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    os.replace(tmp, path)


def _val_sampler(ds: ImageDataset, cfg: RunConfig) -> EpisodeSampler | None:
    """Validation episodes that fit the (possibly small) held-out set; None when impossible."""
    n_shot = cfg.episodes.n_shot
    usable = [c for c, n in enumerate(ds.class_counts().values()) if n >= n_shot + 1]
    if len(usable) < 2:
        logger.warning("%s: too few held-out images for validation episodes; skipping", ds.display_name)
        return None
    if len(usable) < ds.n_classes:
        ds = ds.subset(np.concatenate([ds.indices_of_class(c) for c in usable]))
    min_count = min(ds.class_counts().values())
    n_way = None if cfg.episodes.n_way is None else min(cfg.episodes.n_way, ds.n_classes)
    n_query = max(1, min(cfg.episodes.n_query, min_count - n_shot))
    return EpisodeSampler(
        ds, n_way, n_shot, n_query, seed=cfg.train.seed + 1, n_episodes=cfg.train.val_episodes
    )


def read_pretrained_start(weights: str | None) -> PretrainedStart | None:
    """The ``medmeta pretrain`` checkpoint ``model.weights`` names (verified), or None for other weights.

    Raises:
        CheckpointError: a missing, altered or unreadable checkpoint.
    """
    if not names_pretrain_checkpoint(weights):
        return None
    assert weights is not None
    state, meta = load_checkpoint(weights)
    return PretrainedStart(path=weights, state=state, meta=meta)


def build_method_from_config(
    cfg: RunConfig,
    *,
    channels: int,
    spatial_dims: int,
    backbone_record: dict[str, Any] | None = None,
    start: PretrainedStart | None = None,
) -> FewShotMethod:
    """The configured backbone and method, freshly initialised (or, with a checkpoint's `backbone_record`,
    a library backbone's architecture and preprocessing, for the checkpoint's weights to fill). With
    `start` (`read_pretrained_start`), the backbone starts from a pretrain checkpoint's weights."""
    backbone = make_backbone(
        cfg.model,
        in_channels=channels,
        spatial_dims=spatial_dims,
        image_size=cfg.data.image_size,
        normalization=default_normalization(channels),
        record=backbone_record,
        start=start,
    )
    return build_method(cfg.method.name, backbone, cfg.method.options)


def backbone_record(method: FewShotMethod) -> dict[str, Any] | None:
    """A library backbone's spec, preprocessing and source (what a checkpoint stores); None otherwise."""
    record = getattr(method.backbone, "record", None)
    return record() if callable(record) else None


def train_method(
    cfg: RunConfig,
    *,
    out_dir: str | Path | None = None,
    data: RunData | None = None,
    progress: ProgressHook | None = None,
    overwrite: bool = False,
    resume: bool = False,
    resumable: bool = True,
    distributed: Distributed | None = None,
) -> tuple[FewShotMethod, FitResult, RunData]:
    """Seed, load data, build the method and meta-train it (see `medmeta.train.loop.fit`).

    Everything is checked before the first training step: the run folder, the data, and (when the data is
    loaded here, from ``cfg.data``) the test domains' size for the configured test episodes.

    Args:
        cfg: the run.
        out_dir: run folder (None: nothing written). A non-empty folder is refused unless `resume` or
            `overwrite` (`medmeta.outputs.check_run_folder`); ``config.yaml`` is written into it.
        data: the datasets, when already loaded (the caller then owns their checks, e.g. the benchmark
            tests held-out domains with its own episode sizes).
        progress: progress receiver.
        overwrite: replace the earlier run in `out_dir` (only files medmeta writes there are removed;
            a folder holding anything else is refused).
        resume: continue `out_dir`'s run from its last complete epoch (an empty or missing folder starts
            a new run).
        resumable: write the training state `resume` needs after every epoch (the benchmark, which
            trains a cut-short job again from scratch, passes False).
        distributed: this process's rank in a torchrun job (process group joined): the tasks of every
            meta-batch are split across the ranks (`medmeta.train.loop.fit`). Only rank 0 touches
            `out_dir`, validates and reports `progress`; the other ranks return the training history only.

    Raises:
        OutputError: the run folder may not or cannot be used as asked.
        DataError: unusable data, or test domains too small for the test episodes.
    """
    check_method_config(cfg)
    if cfg.model.raw_pixels:
        raise ConfigError(
            f"backbone {cfg.model.backbone} is the raw-pixel baseline and has nothing to train: adapt it "
            "directly (medmeta adapt --backbone pixels) or list it in a benchmark with frozen: true"
        )
    if distributed is not None and METHODS[cfg.method.name].trainer == "supervised":
        raise ConfigError(
            f"method {cfg.method.name} trains on supervised batches, which medmeta does not split across "
            "processes (only the tasks of episodic meta-batches): run it in one process, without torchrun"
        )
    main = distributed is None or distributed.is_main
    if not main:
        out_dir, progress = None, None
    folder = None if out_dir is None else check_run_folder(Path(out_dir), overwrite=overwrite, resume=resume)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if data is None:
        data = load_run_data(cfg)
        check_test_episodes(cfg, data.test)
    first = data.train[0]
    start = read_pretrained_start(cfg.model.weights)
    torch.manual_seed(cfg.train.seed)
    method = build_method_from_config(
        cfg, channels=first.channels, spatial_dims=first.spatial_dims, start=start
    )
    sampler = MultiDomainSampler(
        data.train,
        cfg.episodes.n_way,
        cfg.episodes.n_shot,
        cfg.episodes.n_query,
        seed=cfg.train.seed,
        n_episodes=cfg.train.episodes_per_epoch,
    )
    val = [s for s in (_val_sampler(d, cfg) for d in data.val) if s is not None]
    norm = default_normalization(first.channels)
    meta = {
        "method": cfg.method.name,
        "backbone": cfg.model.backbone,
        "config": cfg.model_dump(mode="json"),
        "train_domains": [d.display_name for d in data.train],
        "train_classes": {d.display_name: list(d.class_names) for d in data.train},
        "image_shape": list(first.image_shape),
        "spatial_dims": first.spatial_dims,
        "input": {"channels": first.channels, "image_size": cfg.data.image_size},
        "normalization": {"mean": list(norm.mean), "std": list(norm.std)},
        "torch_version": torch.__version__,
        "medmeta_version": __version__,
    }
    if start is not None:  # the pretrain checkpoint the backbone started from
        meta["backbone_start"] = {"checkpoint": start.path, "sha256": start.meta.get("sha256")}
    record = backbone_record(method)
    if record is not None:  # a library backbone: its spec, preprocessing and the weights it started from
        meta["backbone_record"] = record
    out: Path | None = None
    on_start: Callable[[], None] | None = None
    if folder is not None:
        out = folder.prepare()
        on_start = functools.partial(_write_config, folder, cfg)
    run: dict[str, Any] = {
        "out_dir": out,
        "resume": folder is not None and folder.resume,
        "save_state": resumable,
        "on_start": on_start,
    }
    validation = AccuracyValidation(val, cfg.train.val_episodes, prepare=norm) if main else None
    if method.trainer == "supervised":
        from medmeta.train.supervised import fit_supervised

        result = fit_supervised(
            method,
            data.train,
            cfg.train,
            prepare=norm,
            validation=validation,
            meta=meta,
            progress=progress,
            **run,
        )
    else:
        source = EpisodicBatches(sampler, cfg.train, prepare=norm)
        result = fit(
            method,
            source,
            cfg.train,
            validation=validation,
            meta=meta,
            progress=progress,
            distributed=distributed,
            **run,
        )
    if main and result.best_checkpoint is not None:
        record_spread_scale(method, val, result.best_checkpoint, prepare=norm, device=cfg.train.device)
    return method, result, data


def record_spread_scale(
    method: FewShotMethod,
    samplers: list[EpisodeSampler],
    checkpoint: Path,
    *,
    prepare: Normalization,
    device: str = "auto",
) -> float | None:
    """Fit the trained method's spread scale on its validation episodes and add it to `checkpoint` as
    ``calibration.spread_scale`` (`medmeta.eval.spread`: what ``medmeta adapt`` calibrates a support with).

    Nothing is written for methods without distance logits, 1-shot training episodes or no validation set.
    """
    scale = episodes_spread_scale(method, samplers, prepare=prepare, device=resolve_device(device))
    if scale is not None:
        episodes = sum(len(s) for s in samplers)
        amend_checkpoint(checkpoint, {"calibration": {"spread_scale": scale, "episodes": episodes}})
    return scale


def evaluate_on_tests(
    method: FewShotMethod,
    cfg: RunConfig,
    test_sets: list[ImageDataset],
    *,
    normalization: Normalization,
    progress: ProgressHook | None = None,
) -> list[EvalResult]:
    """Evaluate on every test domain with the configured (seeded, shared) episodes."""
    device = resolve_device(cfg.train.device)
    method.to(device)
    results = []
    for ds in test_sets:
        sampler = EpisodeSampler(
            ds,
            cfg.eval.n_way,
            cfg.eval.n_shot,
            cfg.eval.n_query,
            seed=cfg.eval.seed,
            n_episodes=cfg.eval.episodes,
        )
        if progress is not None:
            progress.start(f"test {ds.display_name} {sampler.n_way}-way {sampler.n_shot}-shot", len(sampler))
        try:
            results.append(
                evaluate(
                    method,
                    sampler,
                    prepare=normalization,
                    device=device,
                    progress=None if progress is None else (lambda _d, _t: progress.advance(1)),
                )
            )
        finally:
            if progress is not None:
                progress.stop()
    return results


def load_method(checkpoint: str | Path) -> tuple[FewShotMethod, RunConfig, dict[str, Any]]:
    """Rebuild a method from a checkpoint written by `train_method` (nothing is unpickled).

    Returns:
        ``(method in eval mode, its RunConfig, the checkpoint's JSON description)``.
    """
    state, meta = load_checkpoint(checkpoint)
    try:
        cfg = check_method_config(make_config(meta["config"], source=f"config stored in {checkpoint}"))
        channels = int(meta["image_shape"][0])
        spatial_dims = int(meta["spatial_dims"])
    except (KeyError, TypeError, ValueError, IndexError, ConfigError) as exc:
        raise CheckpointError(
            f"checkpoint {checkpoint} lacks a usable model description ({exc}): it was not written by train"
        ) from None
    method = build_method_from_config(
        cfg,
        channels=channels,
        spatial_dims=spatial_dims,
        backbone_record=record_from_meta(cfg, meta, checkpoint),
    )
    # an adapted checkpoint (medmeta.deploy) also holds its support set under "adapted.*"
    state = {k: v for k, v in state.items() if not k.startswith("adapted.")}
    load_state_strictly(method, state, f"checkpoint {checkpoint} ({cfg.method.name}, {cfg.model.backbone})")
    method.eval()
    return method, cfg, meta


def record_from_meta(cfg: RunConfig, meta: dict[str, Any], checkpoint: str | Path) -> dict[str, Any] | None:
    """The checkpoint's ``backbone_record`` for a library backbone; None for medmeta's own backbones.

    Raises:
        CheckpointError: a library backbone without its record.
    """
    if not cfg.model.from_library:
        return None
    record = meta.get("backbone_record")
    if not isinstance(record, dict):
        raise CheckpointError(
            f"checkpoint {checkpoint} lacks its backbone record: it was not written by train"
        )
    return record


def normalization_from_meta(meta: dict[str, Any]) -> Normalization:
    try:
        n = meta["normalization"]
        mean = tuple(float(v) for v in n["mean"])
        std = tuple(float(v) for v in n["std"])
    except (KeyError, TypeError, ValueError, OverflowError):
        raise CheckpointError("checkpoint has no normalization record: retrain with this medmeta") from None
    if not mean or len(mean) != len(std) or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise CheckpointError(
            "checkpoint's normalization record is not finite means and positive stds of one length: retrain"
        )
    return Normalization(mean=mean, std=std)
