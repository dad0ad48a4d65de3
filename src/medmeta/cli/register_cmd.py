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


def propagate(
    volume: Path = typer.Option(..., "--volume", help="NIfTI volume of one patient."),
    labels: Path = typer.Option(
        ..., "--labels", help="NIfTI label map of the volume with a few slices labelled (0 elsewhere)."
    ),
    out: Path = typer.Option(..., "--out", help="New or empty folder: labels.nii.gz and summary.json."),
    slices: str | None = typer.Option(
        None, "--slices", help="Labelled slice indices, e.g. 5,15,25 (default: every slice holding a label)."
    ),
    strategy: str = typer.Option(
        "chain",
        "--strategy",
        help="chain (slice-to-slice registration), direct (labelled slice onto each target) or segmentation "
        "(a U-Net fine-tuned on the labelled slices, one task per label).",
    ),
    method: str = typer.Option(
        "instance_opt",
        "--method",
        help="Registration method: instance_opt, demons, bspline, affine, identity.",
    ),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Registration steps or iterations."),
    size: int = typer.Option(96, "--size", min=16, help="Slices are squared and resized to this side."),
    axis: int = typer.Option(2, "--axis", min=0, max=2, help="The slice axis of the NIfTI array."),
    window: str = typer.Option("ct", "--window", help="Intensity scaling: ct (W400/L40) or percentile (MR)."),
    reference: Path | None = typer.Option(
        None, "--reference", help="Complete label map: report the Dice of every propagated slice."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Write into a folder that already holds files."
    ),
) -> None:
    """Label a whole volume from a few labelled slices of the same patient (registration or segmentation)."""
    from medmeta.errors import ConfigError
    from medmeta.pipeline.propagation_io import propagate_files

    if window not in ("ct", "percentile"):
        raise ConfigError(f"--window must be ct or percentile, got '{window}'")
    try:
        marks = [int(s) for s in slices.split(",") if s.strip()] if slices else None
    except ValueError:
        raise ConfigError(
            f"--slices {slices!r}: give comma-separated slice indices such as 5,15,25"
        ) from None
    summary = propagate_files(
        volume, labels, out, slices=marks, strategy=strategy, method=method, steps=steps,  # type: ignore[arg-type]
        size=size, axis=axis, window=window, reference=reference, overwrite=overwrite,  # type: ignore[arg-type]
    )  # fmt: skip
    text = (
        f"labels of slices {summary['labelled_slices']} propagated ({strategy}) in {summary['seconds']:.0f} s"
    )
    if "dice" in summary:
        d = summary["dice"]
        text += f"; Dice of the other {d['slices']} slices {d['mean']:.3f} ± {d['ci95']:.3f}"
    say(f"{text} -> {out}")
