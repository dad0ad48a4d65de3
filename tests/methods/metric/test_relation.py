"""Relation Networks: the split first convolution against the plain concatenation, feature-map layout, loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medmeta.methods.metric.relation import (
    RelationModule,
    RelationNet,
    RelationOptions,
    feature_map_shape,
    infer_feature_channels,
)
from medmeta.models.backbones import Conv4, ResNet12
from medmeta.tasks.episode import Episode
from tests._helpers.real_data import assert_above_chance, train_and_test_on_blood_cells


@pytest.mark.parametrize(("spatial_dims", "side"), [(2, 3), (2, 1), (3, 2)])
def test_relation_module_scores_every_pair_as_if_the_maps_were_concatenated(
    spatial_dims: int, side: int
) -> None:
    torch.manual_seed(0)
    module = RelationModule(channels=3, hidden=5, fc_hidden=4, spatial_dims=spatial_dims).eval()
    spatial = (side,) * spatial_dims
    query, classes = torch.randn(2, 4, 3, *spatial), torch.randn(2, 3, 3, *spatial)  # T=2, 4 queries, 3-way
    logits = module(query, classes)
    assert logits.shape == (2, 4, 3)
    for t in range(2):
        for i in range(4):
            for c in range(3):
                pair = torch.cat([query[t, i], classes[t, c]])[None]  # (1, 6, *spatial)
                h = module.block2(module.block1(module.pair_conv(pair)))
                expected = module.head(h.flatten(2).mean(-1))[0, 0]
                torch.testing.assert_close(logits[t, i, c], expected, rtol=1e-5, atol=1e-5)


def test_flattened_conv4_features_reshape_to_the_backbone_feature_maps() -> None:
    backbone = Conv4(in_channels=1, hidden=8, image_size=32).eval()
    x = torch.randn(2, 1, 32, 32)
    maps = backbone.features(x)  # (2, 8, 2, 2)
    shape = feature_map_shape(backbone(x).shape[1], 8, 2)
    assert shape == (8, 2, 2)
    torch.testing.assert_close(backbone(x).reshape(2, *shape), maps)


def test_a_feature_width_that_is_not_channels_times_a_square_map_is_refused() -> None:
    with pytest.raises(ValueError, match="feature_channels"):
        feature_map_shape(24, 8, 2)  # 24 / 8 = 3 is not a square
    with pytest.raises(ValueError, match="feature_channels"):
        feature_map_shape(4, 8, 2)


def test_feature_channels_are_read_from_the_backbone_last_layer() -> None:
    assert infer_feature_channels(Conv4(hidden=8)) == 8
    assert infer_feature_channels(ResNet12(widths=(4, 6, 8, 10))) == 10
    with pytest.raises(ValueError, match="feature_channels"):
        infer_feature_channels(nn.Flatten())


def test_a_backbone_without_layers_works_once_feature_channels_is_given() -> None:
    method = RelationNet(nn.Flatten(), RelationOptions(feature_channels=2, hidden=4)).eval()
    ep = Episode(
        torch.randn(4, 2, 3, 3),
        torch.tensor([0, 0, 1, 1]),
        torch.randn(2, 2, 3, 3),
        torch.tensor([0, 1]),
        torch.arange(2),
    )
    assert method.episode_logits(ep).shape == (2, 2)


def _episode(n_shot: int = 2) -> Episode:
    g = torch.Generator().manual_seed(0)
    return Episode(
        torch.randn(2 * n_shot, 1, 16, 16, generator=g),
        torch.arange(2).repeat_interleave(n_shot),
        torch.randn(3, 1, 16, 16, generator=g),
        torch.tensor([0, 1, 1]),
        torch.arange(2),
    )


def test_mse_loss_regresses_sigmoid_scores_onto_one_hot_labels() -> None:
    torch.manual_seed(0)
    method = RelationNet(Conv4(in_channels=1, hidden=4, image_size=16), RelationOptions(hidden=4)).eval()
    ep = _episode()
    logits = method.episode_logits(ep)
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    expected = ((torch.sigmoid(logits) - target) ** 2).mean()
    torch.testing.assert_close(method.episode_loss(ep), expected)
    ce = RelationNet(method.backbone, RelationOptions(hidden=4, loss="ce"))
    ce.relation.load_state_dict(method.relation.state_dict())
    torch.testing.assert_close(ce.eval().episode_loss(ep), F.cross_entropy(logits, ep.query_labels))


def test_sum_aggregation_feeds_shot_count_times_the_class_mean() -> None:
    torch.manual_seed(0)
    backbone = Conv4(in_channels=1, hidden=4, image_size=16)
    summed = RelationNet(backbone, RelationOptions(hidden=4, aggregate="sum")).eval()
    ep = _episode(n_shot=3)
    support = backbone.eval()(ep.support_images)  # (6, 4)
    query = backbone(ep.query_images)  # (3, 4)
    class_mean = support.view(2, 3, 4).mean(1)  # (2, 4)
    expected = summed.relation(query.view(1, 3, 4, 1, 1), (3 * class_mean).view(1, 2, 4, 1, 1))[0]
    torch.testing.assert_close(summed.episode_logits(ep), expected)


@pytest.mark.data
def test_relation_networks_meta_trained_on_blood_cells_beat_chance_on_unseen_cells(data_dir: Path) -> None:
    # The relation head starts nearly constant in eval mode (batch-norm running statistics lag behind
    # after a handful of steps), so it gets a few more, faster steps than the other methods.
    assert_above_chance(train_and_test_on_blood_cells(data_dir, "relation", episodes=20, lr=3e-3))
