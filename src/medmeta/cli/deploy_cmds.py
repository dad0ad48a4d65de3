"""``medmeta adapt / predict / export / serve``: the practitioner's path from the command line."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from medmeta.cli.ui import err_console, say
from medmeta.data.readers import DEFAULT_MAX_PIXELS
from medmeta.errors import MedmetaError, OutputError
from medmeta.outputs import claim_output_file, claim_output_folder

_MAX_PIXELS_HELP = "Largest image accepted, width x height in pixels (checked before decoding)."
OVERWRITE_HELP = "Replace an existing output file (never a folder, link or special file in its place)."


def adapt(
    model: Path | None = typer.Option(None, "--model", help="Meta-trained checkpoint (RUN/best.json)."),
    backbone: str | None = typer.Option(
        None,
        "--backbone",
        help="Instead of --model, no meta-training: a timm:/open_clip:/hf: backbone, conv4/resnet12 with "
        "--weights RUN/best.json (medmeta pretrain), or pixels[:G] (the raw-pixel baseline).",
    ),
    weights: str | None = typer.Option(
        None,
        "--weights",
        help="With --backbone: local weight file or folder, a `weights import` name, or a pretrain RUN/best.json.",
    ),
    input_size: int | None = typer.Option(
        None,
        "--input-size",
        min=16,
        max=1024,
        help="With a library --backbone: run the network at this side.",
    ),
    method: str = typer.Option(
        "protonet", "--method", help="With --backbone: protonet, simpleshot, linear_probe or finetune."
    ),
    image_size: int | None = typer.Option(
        None,
        "--image-size",
        min=8,
        max=512,
        help="With --backbone: read images at this side (default: the weights').",
    ),
    channels: int = typer.Option(3, "--channels", min=1, max=3, help="With --backbone: 1 (grey) or 3."),
    support: Path = typer.Option(..., "--support", help="Folder of labelled images: SUPPORT/CLASS/*."),
    out: Path = typer.Option(..., "--out", help="Adapted checkpoint to write (OUT.json + weights)."),
    calibrate: bool = typer.Option(
        True,
        "--calibrate/--no-calibrate",
        help="Fit a temperature on leave-one-out predictions of the support so probabilities are not "
        "overconfident (argmax unchanged; needs 2 images per class).",
    ),
    loo: bool = typer.Option(
        False,
        "--loo",
        help="Also predict each support image with the model adapted on the others: accuracy from the "
        "support alone, with a 95% CI (one adaptation per image).",
    ),
    min_shots: int = typer.Option(1, "--min-shots", min=1, help="Fewest images a class may have."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable support images."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help=_MAX_PIXELS_HELP),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing adapted checkpoint OUT (never the --model one)."
    ),
) -> None:
    """Adapt a meta-trained model to a new task from a few labelled images per class."""
    from medmeta.deploy.adapted import load_trained, save_adapted
    from medmeta.deploy.api import adapt as adapt_model
    from medmeta.train.checkpoint import checkpoint_json

    if (model is None) == (backbone is None):
        raise MedmetaError(
            "give either --model CHECKPOINT or --backbone SPEC (a pretrained backbone), not both"
        )
    target = checkpoint_json(out)
    if model is not None and target.resolve() == checkpoint_json(model).resolve():
        raise OutputError(f"--out {out} is the --model checkpoint itself: write the adapted model elsewhere")
    if channels not in (1, 3):
        raise MedmetaError(f"--channels must be 1 or 3, got {channels}")
    claim_output_file(target, overwrite=overwrite)
    if model is not None:
        base = load_trained(model)
    else:
        from medmeta.config import ModelConfig
        from medmeta.deploy.pretrained import pretrained_model

        try:
            spec = ModelConfig(backbone=backbone, weights=weights, input_size=input_size)
        except ValueError as exc:  # pydantic's ValidationError
            from medmeta.config import describe_validation_error

            raise MedmetaError(f"--backbone: {describe_validation_error(exc)}") from None
        base = pretrained_model(spec, method=method, image_size=image_size, channels=channels)
    adapted = adapt_model(
        base, support, min_shots=min_shots, skip_bad=skip_bad, max_pixels=max_pixels, calibrate=False
    )
    counts = ", ".join(
        f"{c} ({int((adapted.support_labels == i).sum())})" for i, c in enumerate(adapted.class_names)
    )
    say(f"adapted {base.meta.get('method')} to {adapted.n_way} classes: {counts}")
    say(f"images read as {base.channels}x{base.image_size}x{base.image_size} (centre crop, bilinear resize)")
    from medmeta.deploy.stability import allows_leave_one_out, leave_one_out
    from medmeta.deploy.stability import calibrate as fit_calibration

    if (loo or calibrate) and not allows_leave_one_out(adapted):
        say("leave-one-out and calibration need 2 images per class: probabilities left uncalibrated")
    elif loo or calibrate:
        result = leave_one_out(adapted)
        if loo:
            low, high = result.interval()
            say(
                f"leave-one-out on the support: {result.correct}/{result.held_out} correct = "
                f"{100 * result.accuracy:.1f}% (95% CI {100 * low:.0f}-{100 * high:.0f}%): each support image "
                "predicted by the model adapted on the others; expect accuracy on new images in about that range"
            )
            say("recall per class: " + ", ".join(f"{c} {100 * r:.0f}%" for c, r in result.recall().items()))
        if calibrate:
            fitted = fit_calibration(adapted, result)
            how = (
                ""
                if fitted.spread_scale is None
                else ", shrunk towards the support's spread times the scale fitted in training "
                f"({fitted.spread_scale:.3g})"
            )
            say(
                f"probabilities calibrated: temperature {fitted.temperature:.2f} fitted on the leave-one-out "
                f"predictions of the support{how} (their calibration error {100 * fitted.ece_before:.1f}% -> "
                f"{100 * fitted.ece_after:.1f}%)"
            )
    path = save_adapted(adapted, out)
    say(f"wrote {path}")


def score(
    model: Path = typer.Option(..., "--model", help="Adapted checkpoint (from `medmeta adapt`)."),
    images: Path = typer.Option(
        ..., "--images", help="Labelled folder: IMAGES/CLASS/* with the model's classes."
    ),
    out: Path = typer.Option(
        Path("scores.csv"), "--out", help="CSV: file, true and predicted class, p_CLASS..."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Stop at an unreadable image instead of skipping it."
    ),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help=_MAX_PIXELS_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
) -> None:
    """Score an adapted model on a labelled folder: accuracy, balanced accuracy, macro-F1, AUC, ECE and
    recall per class; images that are the model's own support images are left out and named."""
    from medmeta.deploy.adapted import load_adapted
    from medmeta.deploy.score import score_folder

    claim_output_file(out, overwrite=overwrite)
    adapted = load_adapted(model)
    result = score_folder(adapted, images, skip_bad=not strict, max_pixels=max_pixels)
    result.write_csv(out)
    for path in result.left_out:
        err_console.print(
            f"left out {path}: it is one of the model's support images", markup=False, highlight=False
        )
    for path, reason in result.predictions.skipped:
        err_console.print(f"skipped {path}: {reason}", markup=False, highlight=False, soft_wrap=True)
    m = result.metrics
    say(
        f"scored {len(result.predictions)} image(s) of {images}: accuracy {100 * m['accuracy']:.1f}%, balanced "
        f"accuracy {100 * m['balanced_accuracy']:.1f}%, macro-F1 {100 * m['macro_f1']:.1f}%, AUC "
        f"{100 * m['auc']:.1f}%, ECE {100 * m['ece']:.1f}% -> {out}"
    )
    say("recall per class: " + ", ".join(f"{c} {100 * r:.1f}%" for c, r in result.recall.items()))
    if result.left_out:
        say(f"left out {len(result.left_out)} support image(s), listed above")


def predict(
    model: Path = typer.Option(..., "--model", help="Adapted checkpoint (from `medmeta adapt`)."),
    images: list[Path] = typer.Option(..., "--images", help="Image file or folder (repeatable)."),
    out: Path = typer.Option(Path("predictions.csv"), "--out", help="CSV: file, predicted class, p_CLASS..."),
    explain: Path | None = typer.Option(None, "--explain", help="Folder for one explanation PNG per image."),
    strict: bool = typer.Option(
        False, "--strict", help="Stop at an unreadable image instead of skipping it."
    ),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1, help=_MAX_PIXELS_HELP),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace an existing --out file and write into a non-empty --explain folder (same names "
        "replaced, other files kept).",
    ),
) -> None:
    """Predict new images with an adapted model; unreadable files are skipped and listed."""
    from medmeta.deploy.adapted import load_adapted
    from medmeta.deploy.predict import predict_files
    from medmeta.deploy.score import support_copies

    claim_output_file(out, overwrite=overwrite)
    if explain is not None:
        claim_output_folder(explain, overwrite=overwrite, what="--explain")

    adapted = load_adapted(model)
    result = predict_files(adapted, images, skip_bad=not strict, max_pixels=max_pixels)
    result.write_csv(out)
    for path, reason in result.skipped:
        err_console.print(f"skipped {path}: {reason}", markup=False, highlight=False, soft_wrap=True)
    copies = [f for f, c in zip(result.files, support_copies(adapted, result.images), strict=True) if c]
    for path in copies:
        err_console.print(
            f"note: {path} is one of the model's support images (its prediction says nothing about accuracy)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    per_image = 1000 * result.seconds / max(len(result), 1)
    say(f"predicted {len(result)} image(s) in {result.seconds:.2f} s ({per_image:.1f} ms per image) -> {out}")
    if result.skipped:
        say(f"skipped {len(result.skipped)} unreadable file(s), listed above")
    if explain is not None:
        from medmeta.explain.explanations import explain as explain_all
        from medmeta.explain.render import write_panels

        start = time.perf_counter()
        paths = write_panels(explain_all(adapted, result), explain)
        say(f"wrote {len(paths)} explanation(s) to {explain} in {time.perf_counter() - start:.1f} s")


def export(
    model: Path = typer.Option(..., "--model", help="Adapted checkpoint (from `medmeta adapt`)."),
    out: Path = typer.Option(..., "--out", help="ONNX file to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Export an adapted model to ONNX (input: images in [0, 1]; output: logits; classes in metadata)."""
    from medmeta.deploy.adapted import load_adapted
    from medmeta.deploy.export import export_onnx

    claim_output_file(out, overwrite=overwrite)
    adapted = load_adapted(model)
    path = export_onnx(adapted, out)
    b = adapted.base
    say(
        f"wrote {path}: input 'images' (N, {b.channels}, {b.image_size}, {b.image_size}) float in [0, 1], "
        f"output 'logits' (N, {adapted.n_way}) for {', '.join(adapted.class_names)}"
    )


def serve(
    model: Path = typer.Option(..., "--model", help="Meta-trained or adapted checkpoint."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    port: int = typer.Option(7860, "--port", min=1, max=65535),
    max_files: int = typer.Option(200, "--max-files", min=1, help="Most files per upload."),
    max_file_mb: float = typer.Option(20.0, "--max-file-mb", min=0.01, help="Largest file, MB."),
    max_upload_mb: float = typer.Option(200.0, "--max-upload-mb", min=0.01, help="Largest upload, MB."),
    max_pixels: int = typer.Option(
        16_000_000, "--max-pixels", min=1, help="Largest image, width x height in pixels (before decoding)."
    ),
) -> None:
    """A local web page: upload a support set and queries, see predictions and explanations."""
    from medmeta.serve.app import Limits, run_server

    if host not in ("127.0.0.1", "localhost", "::1"):
        say(f"warning: binding {host} makes the page reachable from other machines")
    limits = Limits(
        max_files=max_files,
        max_file_bytes=int(max_file_mb * 1e6),
        max_upload_bytes=int(max_upload_mb * 1e6),
        max_pixels=max_pixels,
    )
    if limits.max_file_bytes > limits.max_upload_bytes:
        raise MedmetaError("--max-file-mb is larger than --max-upload-mb: raise the upload limit")
    run_server(
        model,
        host=host,
        port=port,
        limits=limits,
        announce=lambda url: say(f"serving on {url} (Ctrl+C to stop; uploads are deleted when sessions end)"),
    )


def register(app: typer.Typer) -> None:
    """Add the practitioner's commands to the ``medmeta`` app."""
    for fn in (adapt, predict, score, export, serve):
        app.command()(fn)
