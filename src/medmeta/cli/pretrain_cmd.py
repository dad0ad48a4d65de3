"""``medmeta pretrain``: self-supervised pretraining of a backbone on unlabelled images."""

from __future__ import annotations

from pathlib import Path

import typer

from medmeta.cli.overrides import Device, collect
from medmeta.cli.ui import RichProgress, say
from medmeta.config import PretrainConfig, apply_overrides, load_pretrain_config, make_pretrain_config
from medmeta.outputs import check_run_folder

OVERWRITE_HELP = (
    "Replace the run already in OUT: only the files medmeta writes there (best*, last*, train_state*, "
    "history.json, config.yaml) are removed; a folder holding any other file is refused."
)
RESUME_HELP = (
    "Continue the run in OUT from its last complete epoch (weights, momentum copies, optimiser, schedule); "
    "the config must match. An empty or missing OUT starts anew."
)


def pretrain(
    out: Path = typer.Option(..., "--out", help="Run folder: best.json (the pretrained backbone), history."),
    resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    config: Path | None = typer.Option(None, "--config", help="YAML pretrain config (flags override it)."),
    ssl: str | None = typer.Option(None, "--ssl", help="simclr, moco, byol or dino."),
    data: list[str] | None = typer.Option(
        None,
        "--data",
        help="Domain of unlabelled images NAME[@SPLIT][:CLASS,...] (repeatable; pooled; labels unused).",
    ),
    backbone: str | None = typer.Option(
        None, "--backbone", help="conv4, resnet12, timm:ARCH[.TAG], open_clip:NAME or hf:ORG/REPO."
    ),
    weights: str | None = typer.Option(
        None,
        "--weights",
        help="Start from: library weights (file, folder, name) or a pretrain RUN/best.json.",
    ),
    image_size: int | None = typer.Option(None, "--image-size"),
    channels: int | None = typer.Option(None, "--channels"),
    max_images: int | None = typer.Option(None, "--max-images", help="Use a seeded choice of this many."),
    epochs: int | None = typer.Option(None, "--epochs"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    steps_per_epoch: int | None = typer.Option(
        None, "--steps-per-epoch", help="Optimiser steps per epoch (default: one pass over the images)."
    ),
    lr: float | None = typer.Option(None, "--lr"),
    seed: int | None = typer.Option(None, "--seed"),
    device: Device | None = typer.Option(
        None, "--device", help="Where to compute (auto: CUDA when present)."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data root (default $MEDMETA_DATA)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images instead of stopping."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Pretrain a backbone without labels (SimCLR, MoCo v2, BYOL, DINO); use OUT/best.json as --weights."""
    from medmeta.pipeline.pretrain import pretrain as run_pretrain

    overrides = collect(
        {
            "ssl.method": ssl,
            "data.domains": data,
            "model.backbone": backbone,
            "model.weights": weights,
            "data.image_size": image_size,
            "data.channels": channels,
            "data.max_images": max_images,
            "data.data_dir": None if data_dir is None else str(data_dir),
            "data.skip_bad": skip_bad or None,
            "train.epochs": epochs,
            "ssl.batch_size": batch_size,
            "ssl.steps_per_epoch": steps_per_epoch,
            "train.lr": lr,
            "train.seed": seed,
            "train.device": device,
        }
    )
    cfg: PretrainConfig = (
        load_pretrain_config(config, overrides)
        if config is not None
        else make_pretrain_config(apply_overrides({}, overrides), source="options")
    )
    check_run_folder(out, overwrite=overwrite, resume=resume)  # before saying anything; no side effect
    say(f"pretraining {cfg.model.backbone} with {cfg.ssl.method} on {', '.join(cfg.data.domains)} -> {out}")
    _, result, images = run_pretrain(
        cfg, out_dir=out, progress=RichProgress(enabled=not quiet), overwrite=overwrite, resume=resume
    )
    seen = ", ".join(f"{name} {n}" for name, n in images.images_per_domain().items())
    last = result.history[-1]["train_loss"] if result.history else float("nan")
    say(
        f"{len(images)} unlabelled images ({seen}); final loss {last:.4f}; checkpoint {result.best_checkpoint} "
        f"({result.seconds:.0f} s); use it with --backbone {cfg.model.backbone} --weights {result.best_checkpoint}"
    )
