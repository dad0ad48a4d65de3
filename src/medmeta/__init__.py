"""medmeta: meta-learning (few-shot learning) for medical image analysis.

`import medmeta` needs only torch and numpy; optional parts load on use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from medmeta.deploy.adapted import AdaptedModel, TrainedModel
    from medmeta.deploy.predict import Predictions


def adapt(
    model: str | Path | TrainedModel,
    support: str | Path,
    *,
    out: str | Path | None = None,
    min_shots: int = 1,
    skip_bad: bool = False,
    max_pixels: int | None = None,
    overwrite: bool = False,
    calibrate: bool = True,
) -> AdaptedModel:
    """Adapt a meta-trained checkpoint to ``support/CLASS/*`` images (see `medmeta.deploy.api.adapt`).

    `max_pixels` (default 50 MP) caps the pixels an image may declare; it is checked before decoding.
    An existing `out` is replaced only with `overwrite`. `calibrate` fits the probabilities' temperature on
    leave-one-out predictions of the support.
    """
    from medmeta.deploy.api import adapt as _adapt

    cap: dict[str, int] = {} if max_pixels is None else {"max_pixels": max_pixels}
    return _adapt(
        model,
        support,
        out=out,
        min_shots=min_shots,
        skip_bad=skip_bad,
        overwrite=overwrite,
        calibrate=calibrate,
        **cap,
    )


def predict(
    model: str | Path | AdaptedModel,
    images: str | Path | Sequence[str | Path],
    *,
    out: str | Path | None = None,
    explain_dir: str | Path | None = None,
    skip_bad: bool = True,
    max_pixels: int | None = None,
    overwrite: bool = False,
) -> Predictions:
    """Predict images with an adapted model (see `medmeta.deploy.api.predict`; `max_pixels` and
    `overwrite` as in `adapt`)."""
    from medmeta.deploy.api import predict as _predict

    cap = {} if max_pixels is None else {"max_pixels": max_pixels}
    return _predict(
        model, images, out=out, explain_dir=explain_dir, skip_bad=skip_bad, overwrite=overwrite, **cap
    )


__all__ = ["__version__", "adapt", "predict"]
