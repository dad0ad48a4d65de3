"""``medmeta register``: deformable registration of one moving image onto one fixed image."""

from __future__ import annotations

from pathlib import Path

import typer

from medmeta.cli.ui import say


def register(
    fixed: Path = typer.Option(..., "--fixed", help="Fixed image (2D image file or NIfTI volume)."),
    moving: Path = typer.Option(..., "--moving", help="Moving image, the same kind as --fixed."),
    out: Path = typer.Option(
        ..., "--out", help="New or empty folder: warped image, field.npy, checkerboard.png, overlay.png."
    ),
    labels: Path | None = typer.Option(
        None, "--labels", help="Label map of the moving image (warped with nearest-neighbour sampling)."
    ),
    fixed_labels: Path | None = typer.Option(
        None,
        "--fixed-labels",
        help="Label map of the fixed image: report Dice and HD95 of the warped labels.",
    ),
    method: str = typer.Option(
        "instance_opt",
        "--method",
        help="instance_opt (Adam on a dense field), demons, bspline, affine (SimpleITK) or identity.",
    ),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="Optimiser steps (instance_opt) or iterations (SimpleITK methods)."
    ),
    similarity: str = typer.Option(
        "lncc", "--similarity", help="lncc (same modality) or mi (across modalities, e.g. CT and MR)."
    ),
    window: str = typer.Option(
        "ct", "--window", help="NIfTI intensity scaling: ct (W400/L40) or percentile (MR, other)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Write into a folder that already holds files."
    ),
) -> None:
    """Register MOVING onto FIXED and write the warped image, the displacement field and pictures."""
    from medmeta.errors import ConfigError
    from medmeta.pipeline.registration import register_files

    if similarity not in ("lncc", "mi", "mse"):
        raise ConfigError(f"--similarity must be lncc, mi or mse, got '{similarity}'")
    if window not in ("ct", "percentile"):
        raise ConfigError(f"--window must be ct or percentile, got '{window}'")
    summary = register_files(
        fixed,
        moving,
        out,
        labels=labels,
        fixed_labels=fixed_labels,
        method=method,
        steps=steps,
        similarity=similarity,
        window=window,  # type: ignore[arg-type]
        overwrite=overwrite,
    )
    line = f"{method}: {summary['seconds']:.2f} s, folding {100 * summary['folding_fraction']:.2f}% of pixels"
    if "dice" in summary:
        line += f", label Dice {summary['dice_before']:.3f} -> {summary['dice']:.3f}, HD95 {summary['hd95']:.2f} px"
    say(f"{line}; outputs in {out}")
