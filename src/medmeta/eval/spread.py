"""A temperature from the support's own spread, for methods whose logits are negative distances.

For a method scoring a query by ``-d(query, class centre)`` (ProtoNet, SimpleShot: ``FewShotMethod.distance_logits``), classes whose images lie
around their centres with variance ``sigma^2`` are told apart by ``softmax(-d / T)`` with ``T`` proportional
to ``sigma^2`` (twice it for Gaussian classes and squared Euclidean distances). So the right temperature of
one task grows with how spread its classes are, in the units of the logits. The support measures that
spread with little noise: each held-out support image's distance to the centre of its class's other images
(`support_spread`, the negative of its own-class leave-one-out logit), averaged over every held-out image and
every feature. What is left is a factor `c` for how much of that spread lies along the directions that tell
classes apart: `fit_spread_scale` fits it on episodes where labels are plentiful (the training domains'
validation images), never on the task being calibrated.

`spread_temperature` then fits the task's own temperature on the support's leave-one-out predictions, shrunk
towards ``c * spread`` (`fit_temperature` with `medmeta.eval.loo.LOO_PRIOR_SD`): ten held-out predictions of a
2-way 5-shot support no longer decide the temperature alone, and the prior they are shrunk to moves with the
task instead of sitting at the model's own scale. On the cross-domain protocol this halves the pooled ECE
where the plain leave-one-out fit does not (docs/results.md, "Calibration on the cross-domain protocol").

Example:
    >>> held = held_out_predictions(method, support)  # (R, n_way) logits, (R,) labels  # doctest: +SKIP
    >>> t = spread_temperature(*held, spread_scale=0.4)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from medmeta.eval.calibration import fit_pooled_temperature, fit_temperature
from medmeta.eval.evaluate import evaluate
from medmeta.eval.loo import LOO_PRIOR_SD, held_out_predictions
from medmeta.methods.base import FewShotMethod
from medmeta.tasks.episode import Support
from medmeta.tasks.sampler import EpisodeSampler


def support_spread(logits: Tensor, labels: Tensor) -> float:
    """Mean distance of each held-out support image to its class's other images, in the logits' units.

    Args:
        logits: ``(R, n_way)`` leave-one-out logits (negative distances) of the held-out support images.
        labels: ``(R,)`` their classes.

    Raises:
        ValueError: no held-out image, shapes that do not match, or a spread that is not positive (the
            logits are not negative distances).
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1] or len(labels) < 1:
        raise ValueError(
            f"support_spread needs logits (R, n_way) and labels (R,) with R >= 1, got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    own = logits.detach().double().cpu().gather(1, labels.detach().cpu().long()[:, None])  # (R, 1)
    spread = float(-own.mean())
    if not spread > 0:
        raise ValueError(
            f"support spread {spread:.3g} is not positive: the method's logits are not negative distances"
        )
    return spread


def fit_spread_scale(logits: list[Tensor], targets: list[Tensor], spreads: list[float]) -> float:
    """The factor ``c`` such that ``softmax(z / (c * spread))`` best fits labelled episodes (pooled NLL).

    Args:
        logits: one ``(q, n_way)`` tensor of query logits per episode (widths may differ).
        targets: ``(q,)`` true classes of each.
        spreads: each episode's `support_spread`.
    """
    if not (len(logits) == len(targets) == len(spreads)) or not logits:
        raise ValueError("fit_spread_scale needs one logits, target and spread per episode, and an episode")
    return fit_pooled_temperature([z.double() / s for z, s in zip(logits, spreads, strict=True)], targets)


def episodes_spread_scale(
    method: FewShotMethod,
    samplers: Sequence[EpisodeSampler],
    *,
    prepare: Callable[[Tensor], Tensor],
    device: torch.device | str = "cpu",
) -> float | None:
    """`fit_spread_scale` of `method` on every episode of `samplers` (labelled episodes away from the tasks
    it will calibrate, e.g. the training domains' validation images): each episode's query logits and its
    support's `support_spread`.

    Returns:
        None for a method without ``distance_logits``, for episodes whose supports cannot be held out
        (1-shot) and when there is no episode.
    """
    if not method.distance_logits:
        return None
    logits: list[Tensor] = []
    targets: list[Tensor] = []
    spreads: list[float] = []
    was_training = method.training
    method.eval()
    try:
        captured: list[tuple[Tensor, Tensor]] = []
        for sampler in samplers:
            evaluate(
                method, sampler, prepare=prepare, device=device, on_logits=lambda *zy: captured.append(zy)
            )
            z, y = captured[-1]  # (T, q, n_way), (T, q)
            for i in range(len(sampler)):
                ep = sampler.episode(i).to(device).map_images(prepare)
                held = held_out_predictions(method, Support(ep.support_images, ep.support_labels, ep.n_way))
                if held is None:
                    return None
                logits.append(z[i])
                targets.append(y[i])
                spreads.append(support_spread(*held))
    finally:
        method.train(was_training)
    return fit_spread_scale(logits, targets, spreads) if logits else None


def spread_temperature(
    logits: Tensor, labels: Tensor, spread_scale: float, prior_sd: float = LOO_PRIOR_SD
) -> float:
    """The task's temperature: fitted on its support's leave-one-out predictions, shrunk towards
    ``spread_scale * support_spread``.

    Args:
        logits: ``(R, n_way)`` leave-one-out logits of the held-out support images, ``R >= 2``.
        labels: ``(R,)`` their classes.
        spread_scale: `fit_spread_scale` of the model, fitted away from this task.
        prior_sd: standard deviation of the prior on log T around the centre.
    """
    centre = spread_scale * support_spread(logits, labels)
    # fitted relative to the centre, so the searched range moves with it
    return centre * fit_temperature(logits.double() / centre, labels, prior_sd=prior_sd)
