"""``medmeta distill``: a large adapted model (or an ensemble) teaches a small student for a clinic's machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medmeta.cli.ui import RichProgress, say
from medmeta.data.readers import DEFAULT_MAX_PIXELS


def _line(name: str, side: dict[str, Any]) -> str:
    parts = [f"{name}: {side['parameters']:,} parameters"]
    if "test" in side:
        t = side["test"]
        parts.append(f"accuracy {100 * t['accuracy']:.1f}% ± {100 * t['ci95']:.1f}")
    if "onnx_bytes" in side:
        parts.append(f"ONNX {side['onnx_bytes'] / 1e6:.2f} MB, {side['latency_ms']:.2f} ms per image")
    return ", ".join(parts)


def distill(
    teacher: list[Path] = typer.Option(
        ..., "--teacher", help="Adapted checkpoint (from `medmeta adapt`); repeat for an ensemble."
    ),
    student: str = typer.Option(
        "conv4", "--student", help="Student backbone: conv4, resnet12 or timm:ARCH (behind ProtoNet)."
    ),
    images: str = typer.Option(
        ...,
        "--images",
        help="Unlabelled images: a folder (searched recursively) or a domain's training split (NAME or NAME@train).",
    ),
    out: Path = typer.Option(
        ..., "--out", help="New or empty folder: student.json + weights, report.json, student.onnx."
    ),
    test: str | None = typer.Option(
        None,
        "--test",
        help="Labelled test set: a folder TEST/CLASS/* or a domain's split (NAME or NAME@test).",
    ),
    onnx: bool = typer.Option(False, "--onnx", help="Also export the student to OUT/student.onnx."),
    student_weights: str | None = typer.Option(
        None,
        "--student-weights",
        help="Start the student from these weights (a `medmeta pretrain` RUN/best.json, or library weights).",
    ),
    temperature: float = typer.Option(4.0, "--temperature", help="Softening temperature T of the KL term."),
    ce_weight: float = typer.Option(1.0, "--ce-weight", help="Weight of the support cross-entropy."),
    steps: int = typer.Option(300, "--steps", help="Optimiser steps."),
    batch_size: int = typer.Option(64, "--batch-size", help="Teacher-labelled images per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate (cosine-annealed)."),
    views: int = typer.Option(2, "--views", help="Views per unlabelled image: itself + light augmentations."),
    max_images: int = typer.Option(2000, "--max-images", help="Most unlabelled images (seeded choice)."),
    seed: int = typer.Option(0, "--seed"),
    latency_runs: int = typer.Option(50, "--latency-runs", help="Timed single-image runs per model."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Data root (default $MEDMETA_DATA)."),
    dedupe: bool = typer.Option(
        False, "--dedupe", help="Domains: drop near-duplicates (a test split keeps no near-copy of training)."
    ),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help="Largest image, pixels."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace an earlier distillation in OUT (a folder with other files is refused).",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Distil adapted model(s) into a small student that predicts, scores and exports like any adapted model."""
    from medmeta.config.distill import make_distill_config
    from medmeta.deploy.distill_run import run_distillation

    cfg = make_distill_config(
        {
            "temperature": temperature,
            "ce_weight": ce_weight,
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "views": views,
            "max_images": max_images,
            "seed": seed,
            "latency_runs": latency_runs,
        },
        source="options",
    )
    result, report = run_distillation(
        teacher,
        student,
        images,
        out,
        cfg,
        test=test,
        student_weights=student_weights,
        onnx=onnx,
        overwrite=overwrite,
        data_dir=data_dir,
        dedupe=dedupe,
        max_pixels=max_pixels,
        progress=RichProgress(enabled=not quiet),
    )
    d = report["distillation"]
    say(
        f"distilled {len(teacher)} teacher(s) into {student} on {d['unlabelled']} x {cfg.views} view(s) "
        f"and {len(result.student.support_labels)} support images in {d['seconds']:.0f} s"
    )
    if "test_set" in report:
        say(f"test: {report['test_set']['images']}")
    say(_line("teacher", report["teacher"]))
    say(_line("student", report["student"]))
    r = report["student_over_teacher"]
    if "accuracy" in r:
        cost = f"{100 * r['latency_ms']:.0f}% of its latency and " if "latency_ms" in r else ""
        say(
            f"the student keeps {100 * r['accuracy']:.0f}% of the teacher's accuracy (agrees on "
            f"{100 * r['agreement']:.0f}% of the test images) at {cost}{100 * r['parameters']:.1f}% of its parameters"
        )
    if isinstance(report["latency"], str):
        say(f"latency {report['latency']}")
    say(f"wrote {report['student']['checkpoint']} and {out / 'report.json'}")
    if report["student"]["onnx"] is None:
        say(f"export it with: medmeta export --model {report['student']['checkpoint']} --out student.onnx")
    else:
        say(f"wrote {report['student']['onnx']} (ONNX)")
