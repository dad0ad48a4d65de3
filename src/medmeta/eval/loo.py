"""Leave-one-out predictions of a support set, and the temperature they give (calibration from the support alone).

Each support image is predicted by the method adapted on the other support images; fitting a temperature on
these held-out predictions (`medmeta.eval.calibration.fit_temperature`) calibrates the probabilities of the
queries of the same task without looking at any query or at another domain. ``medmeta adapt`` does this for a
practitioner's support folder (`medmeta.deploy.stability`), shrunk towards the support's spread for methods with
distance logits (`medmeta.eval.spread`); the benchmark scores both per episode.

An image whose class has a single support image cannot be held out (its class would vanish), so 1-shot
supports have no leave-one-out predictions at all.

A temperature fitted on the 10 held-out predictions of a 2-way 5-shot support is noisy: on a model whose
probabilities are already about right it can do harm. The shrunk fit (``prior_sd``) adds a prior on log T
centred at 1, whose weight is fixed while the data's grows with the number of held-out predictions.

Example:
    >>> z = support_loo_logits(method, support)  # (n_support, n_way); NaN rows for single-shot classes
    >>> t = loo_temperature(method, support)  # None for a 1-shot support  # doctest: +SKIP
    >>> t = loo_temperature(method, support, prior_sd=LOO_PRIOR_SD)  # shrunk towards 1  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import Tensor

from medmeta.eval.calibration import fit_temperature
from medmeta.methods.base import FewShotMethod
from medmeta.methods.functional import embed
from medmeta.tasks.episode import Support


def held_out_rows(labels: Tensor, n_way: int) -> Tensor:
    """Indices ``(R,)`` of the support images that can be held out: their class has at least 2 images."""
    counts = torch.bincount(labels, minlength=n_way)  # (n_way,)
    return torch.nonzero(counts[labels] >= 2).flatten()


def support_loo_logits(method: FewShotMethod, support: Support) -> Tensor:
    """Logits ``(n_support, n_way)`` of each support image under the method adapted on the others.

    Methods with a frozen backbone embed the support once and score every held-out image in one
    `logits_from_features` call (the same logits as adapting on images, in eval mode); the others adapt
    once per held-out image and predict it within the batch of all support images. Rows of images that cannot be held out are NaN. Runs under ``no_grad``
    (methods that need gradients to adapt enable them inside ``adapt``); call it in eval mode.

    Args:
        method: the few-shot method, in eval mode.
        support: ``images (n, C, *spatial)`` normalised, ``labels (n,)``.
    """
    images, labels, n_way = support.images, support.labels, support.n_way
    n = labels.shape[0]
    out = torch.full((n, n_way), float("nan"), device=images.device)
    rows = held_out_rows(labels, n_way)
    if rows.numel() == 0:
        return out
    everyone = torch.arange(n, device=images.device)
    keep = torch.stack([everyone[everyone != j] for j in rows.tolist()])  # (R, n - 1)
    with torch.no_grad():
        if method.frozen_backbone:
            features = embed(method.backbone, images)  # (n, d)
            logits = method.logits_from_features(
                features[keep], labels[keep], n_way, features[rows][:, None]
            )  # (R, 1, n_way)
            out[rows] = logits[:, 0].to(out.dtype)
        else:
            for r, j in enumerate(rows.tolist()):
                rest = Support(images[keep[r]], labels[keep[r]], n_way)
                # the whole support as one batch: methods whose predictions use batch statistics
                # (per_image_prediction False) would otherwise normalise the held-out image by itself
                out[j] = method.adapt(rest).predict(images)[j].to(out.dtype)
    return out


#: prior standard deviation of log T for the shrunk leave-one-out temperature (`fit_temperature`'s
#: `prior_sd`), fixed before any test: 95% prior mass on T within 0.37-2.7 of the model's own scale
LOO_PRIOR_SD = 0.5


def held_out_predictions(method: FewShotMethod, support: Support) -> tuple[Tensor, Tensor] | None:
    """`support_loo_logits` of the images that can be held out, ``(R, n_way)``, with their labels ``(R,)``;
    None when fewer than 2 images can be held out (a temperature needs 2 predictions)."""
    logits = support_loo_logits(method, support)
    rows = held_out_rows(support.labels, support.n_way)
    if rows.numel() < 2:
        return None
    return logits[rows].float().cpu(), support.labels[rows].cpu()


def loo_temperature(method: FewShotMethod, support: Support, prior_sd: float | None = None) -> float | None:
    """The temperature fitted on `support_loo_logits` (None when fewer than 2 images can be held out).

    With `prior_sd` (e.g. `LOO_PRIOR_SD`), shrunk towards 1 by the number of held-out predictions
    (`medmeta.eval.calibration.fit_temperature`).
    """
    held = held_out_predictions(method, support)
    return None if held is None else fit_temperature(*held, prior_sd=prior_sd)
