"""Matching Networks: attention logits against hand-computed values; FCE against explicit LSTM runs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from medmeta.errors import ConfigError
from medmeta.methods import build_method
from medmeta.methods.metric.matching import (
    FullContextEmbedding,
    MatchingNet,
    MatchingOptions,
    matching_log_probs,
)
from medmeta.models.backbones import Conv4
from medmeta.tasks.episode import Episode
from tests._helpers.real_data import assert_above_chance, train_and_test_on_blood_cells

# Support (1,0) of class 0, (0,1) and (1,1) of class 1; query (1,0).
SUPPORT = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
LABELS = torch.tensor([0, 1, 1])
QUERY = torch.tensor([[1.0, 0.0]])


def _hand_log_probs(scale: float) -> torch.Tensor:
    # cosines of the query with the three support vectors: 1, 0, 1/sqrt(2)
    e = [math.exp(scale * 1.0), math.exp(0.0), math.exp(scale / math.sqrt(2.0))]
    total = sum(e)
    return torch.tensor([[math.log(e[0] / total), math.log((e[1] + e[2]) / total)]])


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_log_probabilities_match_the_hand_computed_attention_vote(scale: float) -> None:
    torch.testing.assert_close(matching_log_probs(QUERY, SUPPORT, LABELS, 2, scale), _hand_log_probs(scale))


def test_method_logits_on_flattened_images_match_the_hand_computed_vote() -> None:
    method = MatchingNet(nn.Flatten(), MatchingOptions(scale=1.0)).eval()
    ep = Episode(SUPPORT.view(3, 2, 1, 1), LABELS, QUERY.view(1, 2, 1, 1), torch.tensor([0]), torch.arange(2))
    torch.testing.assert_close(method.episode_logits(ep), _hand_log_probs(1.0))
    torch.testing.assert_close(method.adapt(ep.support).predict(ep.query_images), _hand_log_probs(1.0))


def test_logits_are_log_probabilities_that_sum_to_one() -> None:
    g = torch.Generator().manual_seed(0)
    logp = matching_log_probs(
        torch.randn(2, 7, 4, generator=g),
        torch.randn(2, 6, 4, generator=g),
        torch.tensor([0, 1, 2, 0, 1, 2]).expand(2, 6),
        3,
        10.0,
    )
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2, 7))


def test_support_encoding_is_features_plus_both_lstm_directions() -> None:
    torch.manual_seed(0)
    fce = FullContextEmbedding(4)
    x = torch.randn(2, 5, 4)  # (T, n_support, d)
    forward = nn.LSTM(4, 4, batch_first=True)
    backward = nn.LSTM(4, 4, batch_first=True)
    lstm = fce.support_lstm
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(forward, f"{name}_l0").copy_(getattr(lstm, f"{name}_l0"))
            getattr(backward, f"{name}_l0").copy_(getattr(lstm, f"{name}_l0_reverse"))
    h_fwd, _ = forward(x)
    h_bwd, _ = backward(x.flip(1))
    expected = x + h_fwd + h_bwd.flip(1)
    torch.testing.assert_close(fce.encode_support(x), expected)


def test_one_query_read_is_an_attention_lstm_step_with_a_skip_connection() -> None:
    torch.manual_seed(0)
    fce = FullContextEmbedding(3)
    q, g = torch.randn(1, 2, 3), torch.randn(1, 4, 3)
    out = fce.encode_query(q, g, steps=1)
    for i in range(2):
        query = q[0, i]
        attention = torch.softmax(g[0] @ query, dim=0)  # (4,)
        read = attention @ g[0]
        h, _ = fce.query_cell(torch.cat([query, read])[None], (query[None], torch.zeros(1, 3)))
        torch.testing.assert_close(out[0, i], h[0] + query)


def test_full_context_embeddings_change_the_logits_and_train_every_lstm_weight() -> None:
    torch.manual_seed(0)
    backbone = Conv4(in_channels=1, hidden=4, image_size=16)
    plain = MatchingNet(backbone, MatchingOptions())
    fce = MatchingNet(backbone, MatchingOptions(fce=True, fce_steps=2))
    g = torch.Generator().manual_seed(1)
    ep = Episode(
        torch.randn(4, 1, 16, 16, generator=g),
        torch.tensor([0, 0, 1, 1]),
        torch.randn(3, 1, 16, 16, generator=g),
        torch.tensor([0, 1, 1]),
        torch.arange(2),
    )
    assert not torch.allclose(plain.eval().episode_logits(ep), fce.eval().episode_logits(ep))
    fce.train().episode_loss(ep).backward()
    assert fce.fce is not None
    assert all(p.grad is not None for p in fce.fce.parameters())


def test_fce_without_a_declared_feature_width_is_refused() -> None:
    with pytest.raises(ValueError, match="out_features"):
        MatchingNet(nn.Flatten(), MatchingOptions(fce=True))


def test_zero_fce_steps_are_refused_naming_the_option() -> None:
    with pytest.raises(ConfigError, match="fce_steps"):
        build_method("matching", nn.Flatten(), {"fce": True, "fce_steps": 0})


@pytest.mark.data
def test_matching_networks_meta_trained_on_blood_cells_beat_chance_on_unseen_cells(data_dir: Path) -> None:
    assert_above_chance(train_and_test_on_blood_cells(data_dir, "matching"))
