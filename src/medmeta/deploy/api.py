"""The practitioner's path in two calls: `adapt` a meta-trained model to a support folder, `predict`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medmeta.data.readers import DEFAULT_MAX_PIXELS
from medmeta.deploy.adapted import (
    AdaptedModel,
    TrainedModel,
    adapt_support,
    load_adapted,
    load_trained,
    save_adapted,
)
from medmeta.deploy.inputs import load_support
from medmeta.deploy.predict import Predictions, predict_files
from medmeta.deploy.stability import calibrate_when_possible
from medmeta.errors import OutputError
from medmeta.outputs import claim_output_file, claim_output_folder
from medmeta.train.checkpoint import checkpoint_json


def adapt(
    model: str | Path | TrainedModel,
    support: str | Path,
    *,
    out: str | Path | None = None,
    min_shots: int = 1,
    skip_bad: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    calibrate: bool = True,
) -> AdaptedModel:
    """Adapt a meta-trained checkpoint to the labelled images in ``support/CLASS/*``.

    Args:
        model: checkpoint path (``RUN/best.json``) or a loaded `TrainedModel`.
        support: folder with one sub-folder of images per class (PNG, JPEG, DICOM, NIfTI, ...).
        out: if given, save the adapted model there (``out.json`` + weights).
        min_shots: fewest images a class may have.
        skip_bad: skip unreadable support images instead of stopping.
        max_pixels: most pixels (width x height) an image may declare; checked before decoding.
        overwrite: replace an existing adapted checkpoint at `out` (never `model` itself).
        calibrate: fit the probabilities' temperature on leave-one-out predictions of the support
            (`medmeta.deploy.stability`; skipped when a class has a single image).

    Raises:
        OutputError: `out` exists (without `overwrite`), is `model`, or is a link or special file.

    Example:
        >>> import medmeta
        >>> # adapted = medmeta.adapt("runs/brain_cross/best.json", "my_support/", out="adapted")
        >>> # medmeta.predict(adapted, ["new_scans/"], out="predictions.csv").predicted_names()
    """
    if out is not None:
        target = checkpoint_json(out)
        if not isinstance(model, TrainedModel) and target.resolve() == checkpoint_json(model).resolve():
            raise OutputError(f"out {out} is the model checkpoint itself: write the adapted model elsewhere")
        claim_output_file(target, overwrite=overwrite, what="out")
    base = model if isinstance(model, TrainedModel) else load_trained(model)
    ds = load_support(
        support,
        image_size=base.image_size,
        channels=base.channels,
        min_shots=min_shots,
        skip_bad=skip_bad,
        max_pixels=max_pixels,
    )
    adapted = adapt_support(base, ds)
    if calibrate:
        calibrate_when_possible(adapted)
    if out is not None:
        save_adapted(adapted, out)
    return adapted


def predict(
    model: str | Path | AdaptedModel,
    images: str | Path | Sequence[str | Path],
    *,
    out: str | Path | None = None,
    explain_dir: str | Path | None = None,
    skip_bad: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
) -> Predictions:
    """Predict image files or folders with an adapted model; optionally write the CSV and explanations.

    Args:
        model: adapted checkpoint path or `AdaptedModel`.
        images: files and/or folders (searched recursively).
        out: CSV path (one row per image: file, predicted class, probability per class).
        explain_dir: folder for one explanation PNG per image (saliency overlay, nearest support images).
        skip_bad: skip unreadable files (listed in ``Predictions.skipped``) instead of stopping.
        max_pixels: most pixels (width x height) an image may declare; a larger one is unreadable.
        overwrite: replace an existing `out` file and write into a non-empty `explain_dir`.

    Raises:
        OutputError: `out` exists or `explain_dir` holds files (without `overwrite`), or either is a link
            or special file.
    """
    if out is not None:
        claim_output_file(Path(out), overwrite=overwrite, what="out")
    if explain_dir is not None:
        claim_output_folder(Path(explain_dir), overwrite=overwrite, what="explain_dir")
    adapted = model if isinstance(model, AdaptedModel) else load_adapted(model)
    paths = [images] if isinstance(images, str | Path) else list(images)
    result = predict_files(adapted, paths, skip_bad=skip_bad, max_pixels=max_pixels)
    if out is not None:
        result.write_csv(out)
    if explain_dir is not None:
        from medmeta.explain.explanations import explain
        from medmeta.explain.render import write_panels

        write_panels(explain(adapted, result), explain_dir)
    return result
