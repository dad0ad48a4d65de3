"""``medmeta continual``: continual few-shot learning of new conditions, stage after stage."""

from __future__ import annotations

import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from medmeta.cli.overrides import Device, collect
from medmeta.cli.ui import RichProgress, console, say
from medmeta.config import ContinualConfig, apply_overrides, load_continual_config, make_continual_config

if TYPE_CHECKING:
    from medmeta.pipeline.continual import ContinualResult


class Finetune(StrEnum):
    full = "full"
    head = "head"


class Distance(StrEnum):
    cosine = "cosine"
    sqeuclidean = "sqeuclidean"


def _pct(mean: float, ci: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{100 * mean:{sign}.1f} ± {100 * ci:.1f}"


def summary_tables(result: ContinualResult) -> list[Table]:
    """One table per K: a row per strategy, the accuracy after each stage, then ACC, BWT and forgetting."""
    from medmeta.pipeline.continual_report import summarise

    rows = summarise(result)
    stream = result.stream
    tables = []
    for k in result.config.data.shots:
        mine = [r for r in rows if r.shots == k]
        seeds = mine[0].seeds if mine else 0
        table = Table(
            title=f"K = {k} shots: accuracy % over the classes seen so far (mean ± 95% CI over {seeds} seed{'s' if seeds != 1 else ''})"
        )
        table.add_column("strategy", no_wrap=True, min_width=max(len(s) for s in result.strategies))
        for t, s in enumerate(stream.stages):
            table.add_column(f"after stage {t + 1}\n{s.domain}\n({stream.seen(t)} classes)", justify="right")
        for name in ("ACC %", "BWT %", "forgetting %"):
            table.add_column(name, justify="right")
        for r in mine:
            stages = [_pct(*m) for m in r.stage_accuracy]
            final = [_pct(*r.final["acc"]), _pct(*r.final["bwt"], signed=True), _pct(*r.final["forgetting"])]
            table.add_row(r.strategy, *stages, *final)
        tables.append(table)
    return tables


def continual(
    out: Path = typer.Option(
        ..., "--out", help="Output folder: new or empty (or this command's earlier run, with --overwrite)."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace an earlier continual run in OUT (a folder holding other files is refused).",
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML continual config (flags override it)."),
    stage: list[str] | None = typer.Option(
        None, "--stage", help="A stage, in order (repeatable): NAME[:CLASS,...] or a folder / .npz path."
    ),
    shots: list[int] | None = typer.Option(None, "--shots", help="K, images per new class (repeatable)."),
    strategy: list[str] | None = typer.Option(
        None, "--strategy", help="naive, replay, prototypes or joint (repeatable; default: all four)."
    ),
    buffer: int | None = typer.Option(None, "--buffer", help="Replay buffer size, in images."),
    buffer_policy: list[str] | None = typer.Option(
        None, "--buffer-policy", help="reservoir or class_balanced (repeatable: one replay run each)."
    ),
    replay_batch: int | None = typer.Option(None, "--replay-batch", help="Buffer images per step."),
    model: str | None = typer.Option(
        None, "--model", help="Start from the backbone of a `medmeta train` checkpoint (RUN/best.json)."
    ),
    backbone: str | None = typer.Option(
        None,
        "--backbone",
        help="Instead of --model: conv4, resnet12, timm:..., open_clip:..., hf:..., pixels[:G].",
    ),
    weights: str | None = typer.Option(
        None, "--weights", help="With --backbone: a `medmeta pretrain` RUN/best.json or library weights."
    ),
    input_size: int | None = typer.Option(None, "--input-size", help="Library backbone: network input side."),
    steps: int | None = typer.Option(None, "--steps", help="Adam steps per stage (naive, replay, joint)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="New-stage images per step."),
    lr: float | None = typer.Option(None, "--lr"),
    finetune: Finetune | None = typer.Option(
        None, "--finetune", help="Train backbone and head (full) or head only."
    ),
    distance: Distance | None = typer.Option(None, "--distance", help="Prototype strategy's distance."),
    seed: list[int] | None = typer.Option(None, "--seed", help="Run seed (repeatable; default 0, 1, 2)."),
    test_per_class: int | None = typer.Option(
        None, "--test-per-class", help="Test images per class, at most."
    ),
    image_size: int | None = typer.Option(
        None, "--image-size", help="Image side (default: the checkpoint's, else 64)."
    ),
    channels: int | None = typer.Option(None, "--channels", help="1 (grey) or 3."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data root (default $MEDMETA_DATA)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images instead of stopping."),
    dedupe: bool = typer.Option(
        False, "--dedupe", help="Drop near-duplicate images first (see docs/data.md)."
    ),
    device: Device | None = typer.Option(
        None, "--device", help="Where to compute (auto: CUDA when present)."
    ),
    threads: int | None = typer.Option(None, "--threads", help="Torch threads (default: torch's)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress display."),
) -> None:
    """Learn new classes stage after stage from K images each; after every stage test one classifier over all
    classes seen so far. Writes OUT/continual.csv, continual.json, continual.png (see docs/continual.md)."""
    from medmeta.pipeline.continual import run_continual

    overrides = collect(
        {
            "data.stages": stage,
            "data.shots": shots,
            "strategies": strategy,
            "replay.buffer": buffer,
            "replay.policies": buffer_policy,
            "replay.batch_size": replay_batch,
            "checkpoint": model,
            "model.backbone": backbone,
            "model.weights": weights,
            "model.input_size": input_size,
            "train.steps": steps,
            "train.batch_size": batch_size,
            "train.lr": lr,
            "train.finetune": finetune,
            "prototypes.distance": distance,
            "train.seeds": seed,
            "data.test_per_class": test_per_class,
            "data.image_size": image_size,
            "data.channels": channels,
            "data.data_dir": None if data_dir is None else str(data_dir),
            "data.skip_bad": skip_bad or None,
            "data.dedupe": dedupe or None,
            "train.device": device,
            "train.threads": threads,
        }
    )
    cfg: ContinualConfig = (
        load_continual_config(config, overrides)
        if config is not None
        else make_continual_config(apply_overrides({}, overrides), source="options")
    )
    if cfg.train.threads:
        import torch

        torch.set_num_threads(cfg.train.threads)
    command = "medmeta " + shlex.join(sys.argv[1:]) if sys.argv[1:] else ""
    result = run_continual(
        cfg, out=out, overwrite=overwrite, progress=RichProgress(enabled=not quiet), command=command
    )
    say(f"start: {result.start.description}; images {cfg.data.channels}x{result.start.image_size}px")
    for t, s in enumerate(result.stream.stages):
        train, test = sum(s.train.class_counts().values()), sum(s.test.class_counts().values())
        say(
            f"stage {t + 1}: {s.spec}: {s.n_classes} new classes, {train} training images to draw shots from, "
            f"{test} test images ({s.test_source})"
        )
    for table in summary_tables(result):
        console.print(table)
    say(
        f"{len(result.records)} runs in {result.seconds:.0f} s; wrote {', '.join(str(p) for p in result.files)}"
    )
