"""Siamese network: contrastive loss and nearest / mean-distance logits against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from medmeta.errors import ConfigError
from medmeta.methods import build_method
from medmeta.methods.metric.siamese import SiameseNet, SiameseOptions, contrastive_loss, siamese_logits
from medmeta.tasks.episode import Episode
from tests._helpers.real_data import assert_above_chance, train_and_test_on_blood_cells

FEATURES = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
LABELS = torch.tensor([0, 0, 1])


def test_contrastive_loss_matches_hand_computed_pull_and_push_terms() -> None:
    # one positive pair at distance 1; negatives at distances 2 and sqrt(5)
    pull = 1.0
    push = ((3.0 - 2.0) ** 2 + (3.0 - math.sqrt(5.0)) ** 2) / 2
    expected = 0.5 * (pull + push)
    torch.testing.assert_close(contrastive_loss(FEATURES, LABELS, margin=3.0), torch.tensor(expected))


def test_negatives_beyond_the_margin_cost_nothing() -> None:
    torch.testing.assert_close(contrastive_loss(FEATURES, LABELS, margin=2.0), torch.tensor(0.5))


def test_a_one_shot_support_without_positive_pairs_only_pushes() -> None:
    loss = contrastive_loss(FEATURES[1:], LABELS[1:], margin=3.0)
    torch.testing.assert_close(loss, torch.tensor(0.5 * (3.0 - math.sqrt(5.0)) ** 2))


# Support (0,0) and (2,0) of class 0, (0,3) of class 1; query (3,0) is 3 and 1 from class 0, sqrt(18) from class 1.
SUPPORT = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
SUPPORT_LABELS = torch.tensor([0, 0, 1])
QUERY = torch.tensor([[3.0, 0.0]])


@pytest.mark.parametrize(("rule", "class0"), [("nearest", 1.0), ("mean", 2.0)])
def test_logits_are_minus_scaled_distance_to_nearest_or_mean_of_class(rule: str, class0: float) -> None:
    logits = siamese_logits(QUERY, SUPPORT, SUPPORT_LABELS, 2, rule, scale=2.0)  # type: ignore[arg-type]
    torch.testing.assert_close(logits, -2.0 * torch.tensor([[class0, math.sqrt(18.0)]]))


def test_method_logits_on_flattened_images_match_the_hand_computed_distances() -> None:
    method = SiameseNet(nn.Flatten(), SiameseOptions(normalize=False, scale=1.0)).eval()
    ep = Episode(
        SUPPORT.view(3, 2, 1, 1), SUPPORT_LABELS, QUERY.view(1, 2, 1, 1), torch.tensor([0]), torch.arange(2)
    )
    expected = -torch.tensor([[1.0, math.sqrt(18.0)]])
    torch.testing.assert_close(method.episode_logits(ep), expected)
    torch.testing.assert_close(method.adapt(ep.support).predict(ep.query_images), expected)


def test_normalized_embeddings_have_unit_length() -> None:
    method = SiameseNet(nn.Flatten(), SiameseOptions())
    torch.testing.assert_close(method.embed(torch.randn(5, 3, 2, 2)).norm(dim=1), torch.ones(5))


def test_episode_loss_is_the_contrastive_loss_of_support_and_query_embeddings() -> None:
    method = SiameseNet(nn.Flatten(), SiameseOptions(normalize=False, margin=3.0))
    ep = Episode(
        FEATURES[:2].view(2, 2, 1, 1),
        torch.tensor([0, 1]),
        FEATURES[2:].view(1, 2, 1, 1),
        torch.tensor([1]),
        torch.arange(2),
    )
    expected = contrastive_loss(FEATURES, torch.tensor([0, 1, 1]), margin=3.0)
    torch.testing.assert_close(method.episode_loss(ep), expected)


def test_a_non_positive_margin_is_refused_naming_the_option() -> None:
    with pytest.raises(ConfigError, match="margin"):
        build_method("siamese", nn.Flatten(), {"margin": -1.0})


@pytest.mark.data
def test_siamese_network_meta_trained_on_blood_cells_beats_chance_on_unseen_cells(data_dir: Path) -> None:
    assert_above_chance(train_and_test_on_blood_cells(data_dir, "siamese"))
