"""Score an adapted model on a labelled folder (``FOLDER/CLASS/*``): accuracy and what it is made of.

The folder's class names must be the model's. An image identical (at the model's input size) to one of the
model's own support images is left out of the score and named: scoring a model on the images it was adapted
on would report memory, not accuracy.

Example:
    >>> # score = score_folder(load_adapted("adapted.json"), "labelled/")
    >>> # score.metrics["accuracy"], score.left_out
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medmeta.data.readers import DEFAULT_MAX_PIXELS
from medmeta.deploy.adapted import AdaptedModel
from medmeta.deploy.inputs import QueryImages, load_support
from medmeta.deploy.predict import Predictions, predict_images
from medmeta.errors import DataError
from medmeta.eval.metrics import confusion, episode_metrics
from medmeta.outputs import write_text_atomic


@dataclass
class Score:
    """An adapted model's predictions on a labelled folder, with their metrics.

    Attributes:
        predictions: the scored images' predictions (left-out images are not among them).
        true: ``(n,)`` true class index of each scored image (the model's class order).
        left_out: files identical to a support image of the model, not scored.
        metrics: accuracy, balanced_accuracy, macro_f1, auc (one-vs-rest) and ece over all scored images.
        confusion: ``(n_way, n_way)`` counts, rows true, columns predicted.
    """

    predictions: Predictions
    true: np.ndarray
    left_out: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))

    @property
    def recall(self) -> dict[str, float]:
        """Share of each class's images predicted as that class (NaN for a class with no image)."""
        counts = self.confusion.sum(1)
        return {
            c: float(self.confusion[i, i] / counts[i]) if counts[i] else float("nan")
            for i, c in enumerate(self.predictions.class_names)
        }

    def to_csv(self) -> str:
        """One row per scored image: file, true class, predicted class, correct, p_CLASS..."""
        names = self.predictions.class_names
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["file", "true_class", "predicted_class", "correct", *(f"p_{c}" for c in names)])
        probs = self.predictions.probabilities.tolist()
        for f, t, p, row in zip(
            self.predictions.files, self.true, self.predictions.predicted, probs, strict=True
        ):
            writer.writerow([f, names[t], names[p], int(t == p), *(f"{v:.6f}" for v in row)])
        return buf.getvalue()

    def write_csv(self, path: str | Path) -> Path:
        """`to_csv` written atomically."""
        return write_text_atomic(path, self.to_csv())


def support_copies(model: AdaptedModel, images: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(n,)`` bool: which of `images` (uint8 ``(n, C, H, W)`` at the model's input size) are identical to
    one of the model's support images."""
    seen = {row.tobytes() for row in model.support_images.numpy().reshape(len(model.support_images), -1)}
    array = images.numpy() if isinstance(images, torch.Tensor) else images
    flat = np.ascontiguousarray(array).reshape(len(array), -1)
    return np.array([row.tobytes() in seen for row in flat], dtype=bool)


def score_folder(
    model: AdaptedModel,
    folder: str | Path,
    *,
    skip_bad: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Score:
    """Predict every image of ``folder/CLASS/*`` and score the predictions against the folder's classes.

    Raises:
        DataError: not a labelled folder, a class the model does not know, or nothing left to score.
    """
    labelled = load_support(
        folder,
        image_size=model.base.image_size,
        channels=model.base.channels,
        skip_bad=skip_bad,
        max_pixels=max_pixels,
    )
    names = model.class_names
    unknown = [c for c in labelled.class_names if c not in names]
    if unknown:
        raise DataError(
            f"{folder} holds class folder(s) {', '.join(unknown)} that the model does not know; its classes are "
            f"{', '.join(names)}: rename or remove those folders"
        )
    to_model = np.array([names.index(c) for c in labelled.class_names], dtype=np.int64)
    files = [str(Path(folder) / str(f)) for f in (labelled.files if labelled.files is not None else [])]
    keep = ~support_copies(model, labelled.images)
    left_out = [f for f, k in zip(files, keep, strict=True) if not k]
    if not keep.any():
        raise DataError(
            f"every image of {folder} is one of the model's support images: nothing left to score"
        )
    queries = QueryImages(
        images=np.ascontiguousarray(labelled.images[keep]),
        files=[f for f, k in zip(files, keep, strict=True) if k],
        skipped=[(s, "unreadable") for s in labelled.skipped],
    )
    predictions = predict_images(model, queries)
    true = to_model[labelled.labels[keep]]
    return Score(predictions, true, left_out, *_metrics(predictions.probabilities, true, len(names)))


def _metrics(probs: torch.Tensor, true: np.ndarray, n_way: int) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of all scored images as one episode (`medmeta.eval.metrics.episode_metrics`: balanced
    accuracy and macro-F1 over the classes present) and the confusion matrix."""
    target = torch.from_numpy(true)
    logits = probs.double().log()  # softmax(log p) = p: the probabilities as logits
    cm = confusion(logits.argmax(-1), target, n_way)  # (n_way, n_way)
    return episode_metrics(logits, target), cm.numpy().astype(np.int64)
