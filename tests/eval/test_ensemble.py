"""Ensembles: probability mixing by hand, temperature and weight fitting, purity, reports, real data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medmeta.eval.ensemble import (
    Ensemble,
    evaluate_ensemble,
    fit_ensemble,
    fit_temperature,
    fit_weights,
    mix_log_probs,
)
from medmeta.methods import switch_method
from medmeta.methods.metric.protonet import ProtoNet
from medmeta.methods.transfer.simpleshot import SimpleShot
from medmeta.models.backbones import Conv4
from medmeta.pipeline import default_normalization, train_method
from medmeta.tasks.episode import Episode
from medmeta.tasks.sampler import EpisodeSampler
from tests._helpers.episodes import make_episode
from tests._helpers.transfer import (
    assert_above_chance,
    real_config,
    seeded,
    single_thread,  # noqa: F401  (autouse fixture)
    toy_domain,
)

NORM = default_normalization(3)


def two_members() -> list[ProtoNet | SimpleShot]:
    torch.manual_seed(0)
    return [ProtoNet(Conv4(3, hidden=8, image_size=16)), SimpleShot(Conv4(3, hidden=8, image_size=16))]


def test_mixing_averages_the_tempered_probabilities_with_the_weights() -> None:
    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    got = mix_log_probs([a, b], torch.tensor([2.0, 1.0]), torch.tensor([0.25, 0.75]))
    expected = 0.25 * torch.softmax(a / 2.0, -1) + 0.75 * torch.softmax(b, -1)
    torch.testing.assert_close(got.exp(), expected)


def test_fit_temperature_recovers_the_temperature_that_generated_the_labels() -> None:
    groups = [4 * torch.randn(2000, n_way, generator=seeded(n_way)) for n_way in (5, 3)]  # two n_way
    labels = [torch.multinomial(torch.softmax(z / 2.5, -1), 1, generator=seeded(9))[:, 0] for z in groups]
    assert fit_temperature(groups, labels) == pytest.approx(2.5, rel=0.1)
    assert fit_temperature([], []) == 1.0


def test_fit_weights_prefers_the_informative_member() -> None:
    good = torch.full((200,), math.log(0.9))
    bad = torch.full((200,), math.log(0.3))
    w = fit_weights(torch.stack([bad, good]))
    assert w.sum().item() == pytest.approx(1.0) and w[1] > 0.99


def test_weights_are_normalised_and_bad_arguments_are_rejected() -> None:
    members = two_members()
    assert Ensemble(members, weights=[1.0, 3.0]).weights.tolist() == [0.25, 0.75]
    with pytest.raises(ValueError, match="one each"):
        Ensemble(members, temperatures=[1.0])
    with pytest.raises(ValueError, match="must be > 0"):
        Ensemble(members, temperatures=[1.0, 0.0])
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([])


def test_fitting_without_validation_episodes_is_rejected() -> None:
    with pytest.raises(ValueError, match="needs validation episodes"):
        fit_ensemble(two_members(), [], prepare=NORM)


def test_a_single_member_ensemble_gives_that_members_log_probabilities() -> None:
    member = two_members()[0].eval()
    ep = make_episode()
    ensemble = Ensemble([member], temperatures=[2.0]).eval()
    torch.testing.assert_close(
        ensemble.episode_logits(ep), F.log_softmax(member.episode_logits(ep) / 2.0, -1)
    )


def test_adapt_does_not_mutate_the_members_and_permutes_with_the_classes() -> None:
    ensemble = Ensemble(two_members(), temperatures=[1.5, 0.5], weights=[0.3, 0.7]).eval()
    ep = make_episode(4, 2, 2)
    before = {k: v.clone() for k, v in ensemble.state_dict().items()}
    logits = ensemble.episode_logits(ep)
    assert all(torch.equal(before[k], v) for k, v in ensemble.state_dict().items())
    perm = torch.tensor([2, 0, 3, 1])
    permuted = Episode(
        ep.support_images,
        perm[ep.support_labels],
        ep.query_images,
        perm[ep.query_labels],
        ep.class_ids[torch.argsort(perm)],
    )
    torch.testing.assert_close(ensemble.episode_logits(permuted)[:, perm], logits, rtol=1e-4, atol=1e-4)


def test_a_transductive_member_needs_the_query() -> None:
    class Transductive(ProtoNet):
        transductive = True

    torch.manual_seed(0)
    ensemble = Ensemble([Transductive(Conv4(3, hidden=8, image_size=16))], names=["t"])
    with pytest.raises(ValueError, match="member t is transductive"):
        ensemble.adapt(make_episode().support)


def test_fit_and_evaluate_report_the_ensemble_beside_its_members_on_the_same_episodes() -> None:
    val = EpisodeSampler(toy_domain(4, 8, seed=1), 3, 2, 2, seed=0, n_episodes=6)
    test = EpisodeSampler(toy_domain(4, 8, seed=2), 3, 2, 2, seed=5, n_episodes=5)
    members = two_members()
    ensemble = fit_ensemble(members, [val], prepare=NORM, names=["proto", "simple"])
    assert ensemble.names == ["proto", "simple"]
    assert all(t > 0 for t in ensemble.temperatures.tolist())
    assert ensemble.weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    results = evaluate_ensemble(ensemble, test, prepare=NORM)
    assert list(results) == ["ensemble", "proto", "simple"]
    assert {r.episodes for r in results.values()} == {5}
    assert results["proto"].domain == "toy [proto]"
    from medmeta.eval.evaluate import evaluate

    alone = evaluate(members[0], test, prepare=NORM, use_cache=False)
    assert results["proto"].per_episode_accuracy == alone.per_episode_accuracy
    assert ensemble.describe()["members"] == ["proto", "simple"]


@pytest.mark.data
def test_an_ensemble_of_baselines_on_one_pretrained_backbone_beats_chance(data_dir: Path) -> None:
    cfg = real_config(data_dir, "simpleshot")
    method, _, data = train_method(cfg)
    members = [method, switch_method(method, "linear_probe"), switch_method(method, "baseline_pp")]
    val = [EpisodeSampler(d, 3, 5, 5, seed=1, n_episodes=15) for d in data.val]
    ensemble = fit_ensemble(members, val, prepare=NORM, names=["simpleshot", "linear_probe", "cosine"])
    test = EpisodeSampler(data.test[0], 3, 5, 10, seed=12345, n_episodes=30)
    results = evaluate_ensemble(ensemble, test, prepare=NORM)
    assert_above_chance(results["ensemble"], 3)
    assert results["ensemble"].accuracy >= min(r.accuracy for r in results.values()) - 1e-9
