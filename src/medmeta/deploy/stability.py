"""How much an adapted model depends on its support draw: leave-one-out over the support images.

Each support image is predicted by the model adapted on all the others (a class left with no image is not
held out). The share predicted correctly estimates accuracy on new images of the same kind, from the support
alone, and its spread over single images says how much one labelled image more or less moves the answer.
A practitioner with 5 images per class has no other test set: this is the number to read before trusting
the model.

Example:
    >>> # loo = leave_one_out(adapt_model(base, "support/"))
    >>> # loo.accuracy, loo.interval()
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from medmeta.data.datasets import ImageDataset
from medmeta.deploy.adapted import AdaptedModel, adapt_support


@dataclass(frozen=True)
class LeaveOneOut:
    """Leave-one-out predictions of the support images.

    Attributes:
        class_names: the model's classes.
        files: ``CLASS/file`` of each support image.
        true: ``(n,)`` class of each support image.
        predicted: ``(n,)`` class predicted when it was held out; -1 when it was not held out (the only image
            of its class).
        logits: ``(n, n_way)`` logits of each held-out image (rows of images not held out are NaN).
    """

    class_names: tuple[str, ...]
    files: tuple[str, ...]
    true: np.ndarray
    predicted: np.ndarray
    logits: torch.Tensor

    @property
    def held_out(self) -> int:
        return int((self.predicted >= 0).sum())

    @property
    def correct(self) -> int:
        return int((self.predicted == self.true).sum())

    @property
    def accuracy(self) -> float:
        return self.correct / self.held_out if self.held_out else float("nan")

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """Wilson score interval of `accuracy` (95% by default), sound for a handful of images."""
        n, p = self.held_out, self.accuracy
        if n == 0:
            return float("nan"), float("nan")
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)

    def recall(self) -> dict[str, float]:
        """Share of each class's held-out support images predicted as that class."""
        out = {}
        for i, c in enumerate(self.class_names):
            rows = (self.true == i) & (self.predicted >= 0)
            out[c] = float((self.predicted[rows] == i).mean()) if rows.any() else float("nan")
        return out


def leave_one_out(model: AdaptedModel) -> LeaveOneOut:
    """Adapt `model`'s base once per support image without it and predict it (n adaptations)."""
    images = model.support_images.numpy()  # (n, C, H, W) uint8
    labels = model.support_labels.numpy()  # (n,)
    counts = np.bincount(labels, minlength=model.n_way)
    predicted = np.full(len(labels), -1, dtype=np.int64)
    logits = torch.full((len(labels), model.n_way), float("nan"))
    for i in range(len(labels)):
        if counts[labels[i]] < 2:
            continue
        keep = np.arange(len(labels)) != i
        rest = ImageDataset(
            images=images[keep], labels=labels[keep], class_names=model.class_names, domain="support"
        )
        without = adapt_support(
            model.base, rest, files=tuple(f for f, k in zip(model.support_files, keep, strict=True) if k)
        )
        logits[i] = without.logits(model.support_images[i : i + 1])[0].float()
        predicted[i] = int(logits[i].argmax())
    return LeaveOneOut(model.class_names, model.support_files, labels.astype(np.int64), predicted, logits)


@dataclass(frozen=True)
class Calibration:
    """What `calibrate` fitted.

    Attributes:
        temperature: the adapted model's new temperature.
        ece_before: ECE of the leave-one-out predictions at the earlier temperature (15 bins).
        ece_after: the same at `temperature`.
        spread_scale: the base model's spread scale the fit was shrunk with (`medmeta.eval.spread`); None
            for the plain leave-one-out fit.
    """

    temperature: float
    ece_before: float
    ece_after: float
    spread_scale: float | None


def model_spread_scale(model: AdaptedModel) -> float | None:
    """The spread scale ``train`` recorded in the base checkpoint (``calibration.spread_scale``), for a method
    with distance logits; None otherwise (models trained before it was recorded, pretrained backbones)."""
    if not model.method.distance_logits:
        return None
    record = model.base.meta.get("calibration")
    value = record.get("spread_scale") if isinstance(record, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def calibrate(model: AdaptedModel, loo: LeaveOneOut) -> Calibration:
    """Fit `model`'s temperature on the leave-one-out logits and set it (`AdaptedModel.temperature`).

    With the base model's spread scale (`model_spread_scale`), the fit is shrunk towards the support's spread
    times that scale (`medmeta.eval.spread.spread_temperature`); otherwise it is the plain maximum-likelihood
    fit (`medmeta.eval.calibration.fit_temperature`). Either way, logits and the argmax are unchanged.

    Raises:
        ValueError: fewer than 2 held-out images (each class needs at least 2 support images).
    """
    from medmeta.eval.calibration import fit_temperature
    from medmeta.eval.metrics import calibration_bins, ece_from_bins
    from medmeta.eval.spread import spread_temperature

    rows = loo.predicted >= 0
    z, y = loo.logits[rows], torch.from_numpy(loo.true[rows])
    scale = model_spread_scale(model)
    t = fit_temperature(z, y) if scale is None else spread_temperature(z, y, scale)

    def ece(temperature: float) -> float:
        probs = torch.softmax(z.double() / temperature, dim=-1)[None]
        return float(ece_from_bins(calibration_bins(probs, y[None]))[0])

    before = ece(model.temperature)
    model.temperature = t
    return Calibration(t, before, ece(t), scale)


def allows_leave_one_out(model: AdaptedModel) -> bool:
    """True when every class has 2 support images, so each can be held out (calibration needs it)."""
    return int(model.support_labels.bincount(minlength=model.n_way).min()) >= 2


def calibrate_when_possible(model: AdaptedModel) -> Calibration | None:
    """`calibrate` on a fresh `leave_one_out` when `allows_leave_one_out`; None (left at temperature 1)
    otherwise."""
    return calibrate(model, leave_one_out(model)) if allows_leave_one_out(model) else None
