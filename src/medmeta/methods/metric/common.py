"""What the metric methods share: support and query embedded in one backbone pass."""

from __future__ import annotations

import torch
from torch import Tensor

from medmeta.methods.base import FewShotMethod
from medmeta.methods.functional import embed
from medmeta.tasks.episode import Episode


def one_pass_episode_logits(method: FewShotMethod, episode: Episode) -> Tensor:
    """Query logits ``(n_query, n_way)`` of a method scored from features (`logits_from_features`), with
    support and query embedded in one forward pass, so batch norm sees one batch in training mode."""
    n_support = episode.support_images.shape[0]
    images = torch.cat([episode.support_images, episode.query_images])  # (n_support + n_query, C, ...)
    features = embed(method.backbone, images)  # (n_support + n_query, d)
    return method.logits_from_features(
        features[None, :n_support], episode.support_labels[None], episode.n_way, features[None, n_support:]
    )[0]
