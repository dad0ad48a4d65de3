"""Predict the classes of new images with an adapted model, and write them as CSV."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medmeta.data.readers import DEFAULT_MAX_PIXELS
from medmeta.deploy.adapted import AdaptedModel
from medmeta.deploy.inputs import QueryImages, load_queries
from medmeta.outputs import write_text_atomic


@dataclass
class Predictions:
    """Predicted classes and probabilities for a batch of images.

    Attributes:
        class_names: the model's classes, in column order.
        files: the path of each predicted image.
        probabilities: float ``(n_query, n_way)``.
        images: uint8 ``(n_query, C, H, W)``, the images as the model saw them.
        skipped: ``(path, reason)`` of each unreadable file.
        seconds: wall time of reading and predicting.
    """

    class_names: tuple[str, ...]
    files: list[str]
    probabilities: torch.Tensor
    images: torch.Tensor
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.files)

    @property
    def predicted(self) -> list[int]:
        """Index of the most probable class of each image."""
        return self.probabilities.argmax(-1).tolist()

    def predicted_names(self) -> list[str]:
        return [self.class_names[i] for i in self.predicted]

    def rows(self) -> list[dict[str, str]]:
        """One row per image: ``file``, ``predicted_class``, ``p_<class>`` for each class."""
        out = []
        for f, probs, pred in zip(self.files, self.probabilities.tolist(), self.predicted, strict=True):
            row = {"file": f, "predicted_class": self.class_names[pred]}
            row.update({f"p_{c}": f"{p:.6f}" for c, p in zip(self.class_names, probs, strict=True)})
            out.append(row)
        return out

    def to_csv(self) -> str:
        buf = io.StringIO()
        columns = ["file", "predicted_class", *(f"p_{c}" for c in self.class_names)]
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())
        return buf.getvalue()

    def write_csv(self, path: str | Path) -> Path:
        """`to_csv` written atomically."""
        return write_text_atomic(path, self.to_csv())


def predict_images(model: AdaptedModel, queries: QueryImages) -> Predictions:
    """Class probabilities for query images already read at the model's input size."""
    start = time.perf_counter()
    images = torch.from_numpy(queries.images)  # (n_query, C, H, W) uint8
    probs = model.probabilities(images)  # (n_query, n_way)
    return Predictions(
        model.class_names,
        list(queries.files),
        probs,
        images,
        list(queries.skipped),
        time.perf_counter() - start,
    )


def predict_files(
    model: AdaptedModel,
    paths: Sequence[str | Path],
    *,
    skip_bad: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Predictions:
    """Read image files or folders (recursively) and predict them.

    Unreadable files, and images declaring more than `max_pixels` pixels, are skipped and listed in
    ``Predictions.skipped`` (with `skip_bad`), else raise.

    Raises:
        DataError: no path, a missing path, a non-image file named explicitly, or nothing readable.
    """
    start = time.perf_counter()
    queries = load_queries(
        paths,
        image_size=model.base.image_size,
        channels=model.base.channels,
        skip_bad=skip_bad,
        max_pixels=max_pixels,
    )
    result = predict_images(model, queries)
    result.seconds = time.perf_counter() - start
    return result
