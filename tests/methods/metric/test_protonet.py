"""Prototypical Networks: logits checked against values computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from medmeta.errors import ConfigError
from medmeta.methods import build_method
from medmeta.methods.functional import compute_prototypes, prototype_logits
from medmeta.methods.metric.protonet import ProtoNet, ProtoNetOptions
from medmeta.tasks.episode import Episode
from tests._helpers.real_data import assert_above_chance, train_and_test_on_blood_cells

# Features are the images themselves: (N, 2, 1, 1) "images" through nn.Flatten() give (N, 2) features.
SUPPORT = torch.tensor([[0.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 4.0]])  # labels 0, 1, 0, 1
SUPPORT_LABELS = torch.tensor([0, 1, 0, 1])
QUERY = torch.tensor([[1.0, 1.0], [3.0, 0.0]])
# Prototypes: class 0 = mean((0,0), (2,0)) = (1,0); class 1 = mean((0,2), (0,4)) = (0,3).
# Squared distances: (1,1) -> 1 and 5; (3,0) -> 4 and 18.
SQ_DIST = torch.tensor([[1.0, 5.0], [4.0, 18.0]])


def _episode() -> Episode:
    return Episode(
        SUPPORT.view(4, 2, 1, 1),
        SUPPORT_LABELS,
        QUERY.view(2, 2, 1, 1),
        torch.tensor([0, 0]),
        torch.arange(2),
    )


def _method(**options: object) -> ProtoNet:
    return ProtoNet(nn.Flatten(), ProtoNetOptions.model_validate(options)).eval()


def test_prototypes_are_the_class_means_whatever_the_label_order() -> None:
    prototypes = compute_prototypes(SUPPORT, SUPPORT_LABELS, 2)
    torch.testing.assert_close(prototypes, torch.tensor([[1.0, 0.0], [0.0, 3.0]]))


def test_squared_euclidean_logits_match_hand_computed_values() -> None:
    logits = _method(scale=0.5).episode_logits(_episode())
    torch.testing.assert_close(logits, -0.5 * SQ_DIST)


def test_euclidean_logits_are_minus_the_distances_as_in_easyfsl() -> None:
    logits = _method(distance="euclidean").episode_logits(_episode())
    expected = -torch.tensor([[1.0, math.sqrt(5.0)], [2.0, math.sqrt(18.0)]])
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(logits, -torch.cdist(QUERY, compute_prototypes(SUPPORT, SUPPORT_LABELS, 2)))


def test_cosine_logits_are_scaled_cosine_similarities() -> None:
    logits = _method(distance="cosine", scale=10.0).episode_logits(_episode())
    # (1,1) makes 45 degrees with both (1,0) and (0,3); (3,0) is parallel to (1,0), orthogonal to (0,3).
    expected = 10.0 * torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2)], [1.0, 0.0]])
    torch.testing.assert_close(logits, expected)


def test_predictor_from_adapt_gives_the_same_logits_as_episode_logits() -> None:
    method, ep = _method(), _episode()
    torch.testing.assert_close(method.adapt(ep.support).predict(ep.query_images), method.episode_logits(ep))


def test_learned_scale_multiplies_the_logits_and_receives_a_gradient() -> None:
    method = ProtoNet(nn.Flatten(), ProtoNetOptions(learn_scale=True, scale=2.0))
    assert isinstance(method.scale, nn.Parameter)
    logits = method.episode_logits(_episode())
    torch.testing.assert_close(logits, -2.0 * SQ_DIST)
    method.episode_loss(_episode()).backward()
    assert method.scale.grad is not None and method.scale.grad.abs() > 0


def test_a_fixed_scale_is_a_buffer_saved_with_the_state() -> None:
    method = ProtoNet(nn.Flatten(), ProtoNetOptions(scale=3.0))
    assert "scale" in dict(method.named_buffers())
    assert not any(name == "scale" for name, _ in method.named_parameters())


@pytest.mark.parametrize("distance", ["sqeuclidean", "euclidean", "cosine"])
def test_logits_of_stacked_episodes_equal_the_logits_of_each_episode(distance: str) -> None:
    g = torch.Generator().manual_seed(0)
    support, query = torch.randn(3, 6, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    labels = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0], [0, 0, 1, 1, 2, 2]])
    method = _method(distance=distance)
    stacked = method.logits_from_features(support, labels, 3, query)
    assert stacked.shape == (3, 4, 3)
    for t in range(3):
        prototypes = compute_prototypes(support[t], labels[t], 3)
        torch.testing.assert_close(stacked[t], prototype_logits(query[t], prototypes, distance, 1.0))  # type: ignore[arg-type]


def test_a_non_positive_scale_is_refused_naming_the_option() -> None:
    with pytest.raises(ConfigError, match="scale"):
        build_method("protonet", nn.Flatten(), {"scale": 0.0})


def test_an_unknown_distance_is_refused_naming_the_option() -> None:
    with pytest.raises(ConfigError, match="distance"):
        build_method("protonet", nn.Flatten(), {"distance": "manhattan"})


@pytest.mark.data
def test_protonet_meta_trained_on_blood_cells_beats_chance_on_unseen_cells(data_dir: Path) -> None:
    assert_above_chance(train_and_test_on_blood_cells(data_dir, "protonet", {"distance": "euclidean"}))
