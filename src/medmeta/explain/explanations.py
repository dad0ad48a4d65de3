"""Why the model predicted what it did: a saliency map per prediction and, for metric methods, the
nearest support images with their embedding distances."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from medmeta.explain.neighbours import nearest_support
from medmeta.explain.saliency import saliency

if TYPE_CHECKING:  # explain sits below deploy: it only reads what deploy hands it
    from medmeta.deploy.adapted import AdaptedModel
    from medmeta.deploy.predict import Predictions


@dataclass(frozen=True)
class Neighbour:
    """A support image close to the query: its class, ``CLASS/file`` name, distance and pixels."""

    class_name: str
    file: str
    distance: float
    image: np.ndarray  # (H, W, 3) uint8


@dataclass(frozen=True)
class Explanation:
    """One prediction explained.

    Attributes:
        file: the query image's path.
        predicted: predicted class name.
        probability: its probability.
        image: ``(H, W, 3)`` uint8, the query as the model saw it (cropped, resized).
        saliency: ``(H, W)`` float in ``[0, 1]`` for the predicted class.
        technique: how `saliency` was computed (``Grad-CAM`` or ``input gradient``).
        neighbours: nearest support images (metric methods only; empty otherwise).
    """

    file: str
    predicted: str
    probability: float
    image: np.ndarray
    saliency: np.ndarray
    technique: str
    neighbours: list[Neighbour] = field(default_factory=list)


def to_rgb(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 ``(C, H, W)`` with C in {1, 3} -> ``(H, W, 3)``."""
    arr = np.asarray(image)
    if arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    return np.ascontiguousarray(arr.transpose(1, 2, 0))


def explain(
    model: AdaptedModel, predictions: Predictions, *, k: int = 3, batch_size: int = 16
) -> list[Explanation]:
    """Saliency for the predicted class of every image, plus the `k` nearest support images.

    Args:
        model: the adapted model that made `predictions`.
        predictions: from `medmeta.deploy.predict.predict_files` (holds the images).
        k: nearest support images per query (metric methods; 0 for none).
        batch_size: images per saliency pass.
    """
    target = predictions.probabilities.argmax(-1)  # (n_query,)
    maps: list[torch.Tensor] = []
    technique = ""
    for i in range(0, len(predictions), batch_size):
        inputs = model.prepare(predictions.images[i : i + batch_size])  # (B, C, H, W)
        m, technique = saliency(
            model.logits_from_inputs, model.method.backbone, inputs, target[i : i + batch_size]
        )
        maps.append(m)
    sal = torch.cat(maps).numpy()  # (n_query, H, W)
    near: tuple[torch.Tensor, torch.Tensor] | None = None
    if model.is_metric and k > 0:
        near = nearest_support(model.embed(predictions.images), model.embed(model.support_images), k)
    out = []
    for q, (f, probs) in enumerate(zip(predictions.files, predictions.probabilities, strict=True)):
        cls = int(target[q])
        neighbours = []
        if near is not None:
            for dist, idx in zip(near[0][q].tolist(), near[1][q].tolist(), strict=True):
                neighbours.append(
                    Neighbour(
                        model.class_names[int(model.support_labels[idx])],
                        model.support_files[idx],
                        float(dist),
                        to_rgb(model.support_images[idx]),
                    )
                )
        out.append(
            Explanation(
                f,
                model.class_names[cls],
                float(probs[cls]),
                to_rgb(predictions.images[q]),
                sal[q],
                technique,
                neighbours,
            )
        )
    return out
