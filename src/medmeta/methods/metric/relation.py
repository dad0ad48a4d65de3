"""Relation Networks.

Sung, Yang, Zhang, Xiang, Torr, Hospedales. "Learning to Compare: Relation Network for Few-Shot
Learning", CVPR 2018, arXiv:1711.06025. A learned relation module scores the concatenated feature maps of
a query and a class; the score (in ``(0, 1)`` after a sigmoid) is regressed onto 1 for the right class.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medmeta.methods.base import MethodOptions
from medmeta.methods.functional import compute_prototypes
from medmeta.methods.metric.common import SupportFeatureMethod
from medmeta.tasks.episode import Episode


def infer_feature_channels(backbone: nn.Module) -> int:
    """Channels of the backbone's last feature map: the width of its last batch-norm or convolution.

    Raises:
        ValueError: the backbone has neither; set ``feature_channels`` in the options.
    """
    for module in reversed(list(backbone.modules())):
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
            return int(module.num_features)
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            return int(module.out_channels)
    raise ValueError(
        f"cannot tell the feature-map channels of {type(backbone).__name__} (no batch-norm or convolution): "
        "set the relation option feature_channels"
    )


def feature_map_shape(n_features: int, channels: int, spatial_dims: int) -> tuple[int, ...]:
    """``(C, *spatial)`` of a flattened square (cubic) feature map with `n_features` values.

    Backbones flatten ``(C, side, ..., side)`` maps channel-first (as `torch.flatten` does), so a
    ``(N, n_features)`` output reshapes to ``(N, C, *spatial)``; pooled outputs give ``side = 1``.

    Raises:
        ValueError: `n_features` is not ``channels * side ** spatial_dims``.
    """
    side = round((n_features / channels) ** (1.0 / spatial_dims)) if n_features >= channels else 0
    if side < 1 or channels * side**spatial_dims != n_features:
        raise ValueError(
            f"backbone features of width {n_features} are not {channels} channels times a square "
            f"{spatial_dims}-D map: set the relation option feature_channels to the backbone's last "
            "channel count, or use a backbone that flattens (C, side, ...) maps"
        )
    return (channels,) + (side,) * spatial_dims


class RelationModule(nn.Module):
    """The learned comparison ``g``: two [conv 3x3, batch norm, ReLU, max-pool 2] blocks on the pair's
    concatenated maps, global average pooling, then ``Linear(hidden, fc_hidden) -> ReLU -> Linear(., 1)``.

    The first convolution is linear in the concatenation ``[query, class]``, so it is applied to the
    ``n_query`` query maps and the ``n_way`` class maps separately and the results are summed per pair:
    ``n_query + n_way`` convolutions instead of ``n_query * n_way`` (the output is identical). Pooling
    uses ``ceil_mode`` and the head pools globally, so 1x1 (or 1x1x1) feature maps work.

    Args:
        channels: channels C of one feature map (the pair has 2C).
        hidden: channels of the two conv blocks.
        fc_hidden: width of the hidden fully connected layer.
        spatial_dims: 2 or 3.
    """

    def __init__(self, channels: int, hidden: int = 64, fc_hidden: int = 8, spatial_dims: int = 2) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        bn = nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d
        pool = nn.MaxPool3d if spatial_dims == 3 else nn.MaxPool2d
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.pair_conv = conv(2 * channels, hidden, 3, padding=1)
        self.block1 = nn.Sequential(bn(hidden), nn.ReLU(inplace=True), pool(2, ceil_mode=True))
        self.block2 = nn.Sequential(
            conv(hidden, hidden, 3, padding=1), bn(hidden), nn.ReLU(inplace=True), pool(2, ceil_mode=True)
        )
        self.head = nn.Sequential(
            nn.Linear(hidden, fc_hidden), nn.ReLU(inplace=True), nn.Linear(fc_hidden, 1)
        )

    def forward(self, query_maps: Tensor, class_maps: Tensor) -> Tensor:
        """Relation logits of every (query, class) pair.

        Args:
            query_maps: ``(T, n_query, C, *spatial)``.
            class_maps: ``(T, n_way, C, *spatial)``.

        Returns:
            ``(T, n_query, n_way)`` logits; ``sigmoid`` of them is the relation score.
        """
        t, n_query = query_maps.shape[:2]
        n_way = class_maps.shape[1]
        conv = F.conv3d if self.spatial_dims == 3 else F.conv2d
        c = self.channels
        weight, bias = self.pair_conv.weight, self.pair_conv.bias
        from_query = conv(
            query_maps.flatten(0, 1), weight[:, :c], None, padding=1
        )  # (T*n_query, hidden, *sp)
        from_class = conv(class_maps.flatten(0, 1), weight[:, c:], bias, padding=1)  # (T*n_way, hidden, *sp)
        rest = from_query.shape[1:]
        pairs = from_query.view(t, n_query, 1, *rest) + from_class.view(
            t, 1, n_way, *rest
        )  # (T, n_query, n_way, hidden, *sp)
        h = self.block2(self.block1(pairs.flatten(0, 2)))  # (T*n_query*n_way, hidden, *sp')
        h = h.flatten(2).mean(-1)  # (T*n_query*n_way, hidden)
        return self.head(h).view(t, n_query, n_way)


class RelationOptions(MethodOptions):
    """Options of `RelationNet`.

    Attributes:
        hidden: channels of the relation module's conv blocks (paper: 64).
        fc_hidden: width of its hidden fully connected layer (paper: 8).
        loss: ``mse`` between the sigmoid relation scores and the one-hot labels (paper), or ``ce``
            (cross-entropy on the relation logits).
        aggregate: ``mean`` or ``sum`` (paper) of a class's support feature maps; the mean keeps the
            scale of 1-shot and K-shot class maps equal, so a model meta-trained at one shot count
            transfers to another.
        feature_channels: channels C of the backbone's feature map, whose flattened output is reshaped
            to ``(C, *spatial)``; None infers it from the backbone's last batch-norm or convolution.
    """

    hidden: int = Field(64, ge=1)
    fc_hidden: int = Field(8, ge=1)
    loss: Literal["mse", "ce"] = "mse"
    aggregate: Literal["mean", "sum"] = "mean"
    feature_channels: int | None = Field(None, ge=1)


class RelationNet(SupportFeatureMethod):
    """Sung et al. "Learning to Compare: Relation Network for Few-Shot Learning", CVPR 2018, arXiv:1711.06025.

    Support feature maps are aggregated per class; a relation module (two conv blocks and two fully
    connected layers) scores every concatenated (query map, class map) pair, and the scores are
    regressed onto the one-hot labels with a mean squared error.

    Backbones return flattened features ``(N, d)``; the relation module sees them as ``(N, C, *spatial)``
    maps (Conv4 at 64x64 gives 64x4x4; pooled backbones give 1x1 maps). Works for 2D and 3D.

    Example:
        >>> from medmeta.models import Conv4
        >>> method = RelationNet(Conv4(in_channels=1, image_size=64), RelationOptions(loss="ce"))
        >>> # logits = method.episode_logits(episode)  # (n_query, n_way), sigmoid = relation scores
    """

    Options = RelationOptions
    options: RelationOptions

    def __init__(self, backbone: nn.Module, options: RelationOptions | None = None) -> None:
        super().__init__(backbone, options or RelationOptions())
        channels = self.options.feature_channels or infer_feature_channels(backbone)
        self.spatial_dims = int(getattr(backbone, "spatial_dims", 2))
        self.relation = RelationModule(
            channels, self.options.hidden, self.options.fc_hidden, self.spatial_dims
        )

    def _maps(self, features: Tensor) -> Tensor:
        """``(T, N, d)`` flattened features -> ``(T, N, C, *spatial)`` maps."""
        shape = feature_map_shape(features.shape[-1], self.relation.channels, self.spatial_dims)
        return features.reshape(*features.shape[:-1], *shape)

    def logits_from_features(
        self, support_features: Tensor, support_labels: Tensor, n_way: int, query_features: Tensor
    ) -> Tensor:
        class_features = compute_prototypes(support_features, support_labels, n_way)  # (T, n_way, d)
        if self.options.aggregate == "sum":
            counts = F.one_hot(support_labels, n_way).sum(-2).to(class_features.dtype)  # (T, n_way)
            class_features = class_features * counts[..., None]
        return self.relation(self._maps(query_features), self._maps(class_features))

    def episode_loss(self, episode: Episode) -> Tensor:
        """MSE of the sigmoid relation scores against one-hot labels (``loss="mse"``), else cross-entropy."""
        logits = self.episode_logits(episode)  # (n_query, n_way)
        if self.options.loss == "ce":
            return F.cross_entropy(logits, episode.query_labels)
        target = F.one_hot(episode.query_labels, episode.n_way).to(logits.dtype)  # (n_query, n_way)
        return F.mse_loss(torch.sigmoid(logits), target)
