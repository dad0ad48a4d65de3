"""From a `ContinualConfig` to a continual few-shot run: the Python API behind ``medmeta continual``.

For every K in ``data.shots``, run seed and strategy: learn the stages in order from K labelled images per
new class (`medmeta.tasks.stream.draw_shots`), and after each stage test one classifier over every class
seen so far on the stages' test images. The scores (`medmeta.eval.continual`) go, with mean and 95% CI
over seeds, into the output folder (`medmeta.pipeline.continual_report`). Within a seed every strategy
starts from the same backbone and the same shots; a strategy's numbers depend only on its seed, not on
which other strategies run.

The backbone starts as `medmeta adapt` resolves it: a ``medmeta train`` checkpoint (``checkpoint``,
`medmeta.pipeline.load_method`), or ``model`` (conv4/resnet12 from scratch or from a ``medmeta pretrain``
checkpoint via `read_pretrained_start`, a library backbone, or raw pixels).

Example:
    >>> from medmeta.config import make_continual_config
    >>> cfg = make_continual_config({"data": {"stages": ["blood_pbc", "brain_tumor_mri"], "shots": [5]}})
    >>> result = run_continual(cfg, out=Path("runs/continual"))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from medmeta.config import ContinualConfig
from medmeta.config.continual import BufferPolicy, Strategy
from medmeta.data.transforms import Normalization
from medmeta.errors import ConfigError, OutputError
from medmeta.eval.continual import ContinualScores, continual_scores, per_class_accuracy
from medmeta.models.factory import make_backbone
from medmeta.outputs import check_output_file, claim_output_folder, write_text_atomic
from medmeta.pipeline.classification import (
    default_normalization,
    load_method,
    normalization_from_meta,
    read_pretrained_start,
)
from medmeta.pipeline.continual_report import OUTPUT_FILES, OWN_FILE, write_report
from medmeta.provenance import run_stamp
from medmeta.tasks.stream import Stream, check_shots, draw_shots, load_stream
from medmeta.train.continual import make_learner, predict_classes
from medmeta.train.loop import ProgressHook

#: size images are read at when neither the config nor a start checkpoint says
DEFAULT_IMAGE_SIZE = 64


def check_continual_folder(out: Path, *, overwrite: bool = False) -> Path:
    """The output folder must be new, empty, or (with `overwrite`) hold only an earlier run's files; no side effect.

    Raises:
        OutputError: a link, special file or file at `out`; a folder holding anything this command did not
            write; an earlier run's files without `overwrite`.
    """
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputError(f"--out {out} is not a folder: give a new or empty folder")
    entries = sorted(os.listdir(out)) if out.exists() else []
    foreign = [e for e in entries if not OWN_FILE.fullmatch(e)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(
            f"--out {out} holds files medmeta continual did not write ({shown}): give a new or empty folder"
        )
    if entries and not overwrite:
        raise OutputError(
            f"--out {out} already holds a continual run ({', '.join(entries)}): pass --overwrite to replace "
            "it, or give a new or empty folder"
        )
    for name in entries:  # regular files only, never through links
        check_output_file(out / name, overwrite=True)
    check_output_file(out / OUTPUT_FILES[0], overwrite=True)  # a parent that is a file
    return out


@dataclass(frozen=True)
class Start:
    """Where every strategy's backbone starts.

    Attributes:
        description: for the report (``conv4 from scratch``, ``backbone of RUN/best.json``...).
        image_size: side images are read at.
        normalization: uint8 images -> the backbone's inputs.
        build: run seed -> a fresh backbone (seeded initialisation; the same weights for a checkpoint).
    """

    description: str
    image_size: int
    normalization: Normalization
    build: Callable[[int], nn.Module]


def resolve_start(cfg: ContinualConfig) -> Start:
    """The backbone `cfg` names, read and checked before any training.

    Raises:
        ConfigError: a checkpoint read at another image size or channel count than asked.
        CheckpointError: a missing, altered or unusable checkpoint.
    """
    channels = cfg.data.channels
    if cfg.checkpoint is not None:
        method, _, meta = load_method(cfg.checkpoint)
        want_channels, size = int(meta["image_shape"][0]), int(meta["image_shape"][-1])
        if want_channels != channels:
            raise ConfigError(
                f"checkpoint {cfg.checkpoint} reads {want_channels}-channel images, this run {channels}: pass "
                f"--channels {want_channels}"
            )
        if cfg.data.image_size not in (None, size):
            raise ConfigError(
                f"checkpoint {cfg.checkpoint} was trained on {size} px images, this run asks for "
                f"{cfg.data.image_size}: drop --image-size or pass {size}"
            )
        backbone = method.backbone
        name = f"backbone of {cfg.checkpoint} ({meta.get('method')}, {method.backbone.__class__.__name__})"
        return Start(name, size, normalization_from_meta(meta), lambda _seed: copy.deepcopy(backbone))
    start = read_pretrained_start(cfg.model.weights)
    pretrained_size = int((start.meta.get("input") or {}).get("image_size") or 0) if start is not None else 0
    size = cfg.data.image_size or pretrained_size or DEFAULT_IMAGE_SIZE
    norm = default_normalization(channels)

    def build(seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return make_backbone(
                cfg.model,
                in_channels=channels,
                spatial_dims=2,
                image_size=size,
                normalization=norm,
                start=start,
            )

    build(0)  # unknown names, unusable weights: fail before any data is read
    if start is not None:
        name = f"{cfg.model.backbone} from {start.path}"
    elif cfg.model.from_library:
        name = f"{cfg.model.backbone} ({cfg.model.weights or 'its pretrained weights'})"
    else:
        name = f"{cfg.model.backbone} from scratch" if not cfg.model.raw_pixels else cfg.model.backbone
    return Start(name, size, norm, build)


@dataclass(frozen=True)
class Variant:
    """One strategy run: its label (``replay/POLICY`` for replay), strategy and buffer policy."""

    label: str
    strategy: Strategy
    policy: BufferPolicy = "class_balanced"


def strategy_variants(cfg: ContinualConfig) -> list[Variant]:
    """Every strategy of `cfg` in order; replay once per buffer policy."""
    out: list[Variant] = []
    for s in cfg.strategies:
        if s == "replay":
            out += [Variant(f"replay/{p}", s, p) for p in cfg.replay.policies]
        else:
            out.append(Variant(s, s))
    return out


@dataclass
class RunRecord:
    """One (shots, seed, strategy) run: the class accuracy matrix ``(T, n_classes)`` and its scores."""

    shots: int
    seed: int
    strategy: str
    class_accuracy: np.ndarray
    scores: ContinualScores
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        acc = [[None if np.isnan(v) else float(v) for v in row] for row in self.class_accuracy]
        return {
            "shots": self.shots,
            "seed": self.seed,
            "strategy": self.strategy,
            "class_accuracy": acc,
            **self.scores.to_dict(),
            "seconds": round(self.seconds, 3),
        }


@dataclass
class ContinualResult:
    """A finished run: its stream, records and the files written."""

    config: ContinualConfig
    stream: Stream
    start: Start
    strategies: list[str]
    records: list[RunRecord] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def run_one(
    cfg: ContinualConfig,
    stream: Stream,
    start: Start,
    backbone: nn.Module,
    variant: Variant,
    *,
    n_shot: int,
    seed: int,
    on_stage: Callable[[], None] | None = None,
) -> RunRecord:
    """Learn every stage with one strategy and test after each; `backbone` is copied, never changed."""
    t0 = time.perf_counter()
    learner = make_learner(
        variant.strategy,
        backbone,
        cfg,
        prepare=start.normalization,
        image_shape=stream.stages[0].train.image_shape,
        seed=seed,
        policy=variant.policy,
    )
    class_acc = np.full((len(stream), stream.n_classes), np.nan)  # (T, n_classes)
    for t in range(len(stream)):
        images, labels = draw_shots(stream, t, n_shot=n_shot, seed=seed)
        learner.learn(torch.from_numpy(images), torch.from_numpy(labels), stream.seen(t))
        test_images, test_labels = stream.test_set(t)
        pred = predict_classes(learner, test_images, prepare=start.normalization)
        class_acc[t, : stream.seen(t)] = per_class_accuracy(pred, test_labels, stream.seen(t))
        if on_stage is not None:
            on_stage()
    scores = continual_scores(class_acc, stream.stage_of_class())
    return RunRecord(n_shot, seed, variant.label, class_acc, scores, time.perf_counter() - t0)


def run_continual(
    cfg: ContinualConfig,
    *,
    out: Path,
    overwrite: bool = False,
    progress: ProgressHook | None = None,
    command: str = "",
) -> ContinualResult:
    """Check everything, run every (shots, seed, strategy) and write ``OUT/config.yaml``, ``continual.csv``,
    ``continual.json`` and ``continual.png``.

    Raises:
        OutputError: `out` may not be used (`check_continual_folder`).
        DataError: an unknown stage, a class named twice, too few training images for the shots.
        ConfigError, CheckpointError: an unusable start (`resolve_start`).
    """
    check_continual_folder(out, overwrite=overwrite)
    start = resolve_start(cfg)
    d = cfg.data
    stream = load_stream(
        d.stages,
        root=d.data_dir,
        image_size=start.image_size,
        channels=d.channels,
        test_per_class=d.test_per_class,
        test_fraction=d.test_fraction,
        split_seed=d.split_seed,
        skip_bad=d.skip_bad,
        dedupe=d.dedupe,
    )
    for k in d.shots:
        check_shots(stream, k)
    claim_output_folder(out, overwrite=True)  # checked above: new, empty or this command's own files
    write_text_atomic(out / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    variants = strategy_variants(cfg)
    result = ContinualResult(cfg, stream, start, [v.label for v in variants])
    t0 = time.perf_counter()
    total = len(d.shots) * len(cfg.train.seeds) * len(variants) * len(stream)
    if progress is not None:
        progress.start(f"continual: {len(stream)} stages", total)
    try:
        for n_shot in d.shots:
            for seed in cfg.train.seeds:
                backbone = start.build(seed)
                for variant in variants:
                    advance = (
                        None if progress is None else (lambda v=variant.label: progress.advance(1, run=v))
                    )
                    record = run_one(
                        cfg, stream, start, backbone, variant, n_shot=n_shot, seed=seed, on_stage=advance
                    )
                    result.records.append(record)
    finally:
        if progress is not None:
            progress.stop()
    result.seconds = time.perf_counter() - t0
    meta = {
        **run_stamp(command),
        "start": start.description,
    }
    result.files = write_report(out, result, meta)
    return result
