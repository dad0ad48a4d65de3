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


def calibrate(model: AdaptedModel, loo: LeaveOneOut) -> tuple[float, float, float]:
    """Fit `model`'s temperature on the leave-one-out logits and set it (`AdaptedModel.temperature`).

    Returns:
        ``(temperature, ece_before, ece_after)`` on those held-out support predictions (15 bins).

    Raises:
        ValueError: fewer than 2 held-out images (each class needs at least 2 support images).
    """
    from medmeta.eval.calibration import fit_temperature
    from medmeta.eval.metrics import calibration_bins, ece_from_bins

    rows = loo.predicted >= 0
    z, y = loo.logits[rows], torch.from_numpy(loo.true[rows])
    t = fit_temperature(z, y)

    def ece(temperature: float) -> float:
        probs = torch.softmax(z.double() / temperature, dim=-1)[None]
        return float(ece_from_bins(calibration_bins(probs, y[None]))[0])

    before = ece(model.temperature)
    model.temperature = t
    return t, before, ece(t)


def allows_leave_one_out(model: AdaptedModel) -> bool:
    """True when every class has 2 support images, so each can be held out (calibration needs it)."""
    return int(model.support_labels.bincount(minlength=model.n_way).min()) >= 2


def calibrate_when_possible(model: AdaptedModel) -> tuple[float, float, float] | None:
    """`calibrate` on a fresh `leave_one_out` when `allows_leave_one_out`; None (left at temperature 1)
    otherwise."""
    return calibrate(model, leave_one_out(model)) if allows_leave_one_out(model) else None
