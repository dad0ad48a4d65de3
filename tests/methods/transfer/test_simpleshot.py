"""SimpleShot: centring, normalisation and nearest centroid by hand; cached scoring; real data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from medmeta.methods.transfer.simpleshot import SimpleShot, SimpleShotOptions
from medmeta.tasks.episode import Support
from tests._helpers.episodes import make_episode
from tests._helpers.transfer import (
    Flat,
    as_images,
    assert_above_chance,
    real_config,
    single_thread,  # noqa: F401  (autouse fixture)
    train_and_test,
)


def flat_simpleshot(transform: str = "cl2n") -> SimpleShot:
    method = SimpleShot(Flat(2), SimpleShotOptions(transform=transform))  # type: ignore[arg-type]
    method.feature_mean.copy_(torch.tensor([1.0, 1.0]))
    return method.eval()


def test_logits_are_negative_squared_distances_to_centroids_of_centred_unit_features() -> None:
    # centred: (3,0) (0,2) -> unit (1,0) (0,1) -> c0 = (.5,.5); (-3,0) (0,-2) -> (-1,0) (0,-1) -> c1 = -c0
    support = Support(
        as_images(torch.tensor([[4.0, 1.0], [1.0, 3.0], [-2.0, 1.0], [1.0, -1.0]])),
        torch.tensor([0, 0, 1, 1]),
        2,
    )
    query = as_images(torch.tensor([[2.0, 5.0], [1.0, 1.0]]))  # (1,4)/sqrt(17); the mean itself
    logits = flat_simpleshot().adapt(support).predict(query)
    s = 5 / math.sqrt(17)  # 2 * q . c0 for the first query; ||q||^2 = 1, ||c||^2 = 1/2
    expected = torch.tensor([[-(1.5 - s), -(1.5 + s)], [-0.5, -0.5]])  # the mean maps to 0: equidistant
    torch.testing.assert_close(logits, expected)


def test_without_centring_the_mean_is_ignored() -> None:
    support = Support(as_images(torch.tensor([[2.0, 0.0], [0.0, 3.0]])), torch.tensor([0, 1]), 2)
    query = as_images(torch.tensor([[5.0, 0.0]]))
    for kind, expected in [("l2n", [[0.0, -2.0]]), ("none", [[-9.0, -34.0]])]:
        torch.testing.assert_close(
            flat_simpleshot(kind).adapt(support).predict(query), torch.tensor(expected)
        )


def test_cached_scoring_equals_adapting_on_each_episode() -> None:
    torch.manual_seed(0)
    from medmeta.models.backbones import Conv4

    method = SimpleShot(Conv4(3, hidden=8, image_size=16)).eval()
    method.feature_mean.normal_()
    episodes = [make_episode(3, 2, 3, seed=s) for s in range(2)]
    with torch.no_grad():
        expected = torch.stack([method.episode_logits(ep) for ep in episodes])
        s = torch.stack([method.backbone(ep.support_images) for ep in episodes])
        q = torch.stack([method.backbone(ep.query_images) for ep in episodes])
        labels = torch.stack([ep.support_labels for ep in episodes])
        torch.testing.assert_close(method.logits_from_features(s, labels, 3, q), expected)


@pytest.mark.data
def test_simpleshot_pretrains_and_beats_chance_on_unseen_blood_cell_classes(data_dir: Path) -> None:
    _, results = train_and_test(real_config(data_dir, "simpleshot"))
    assert_above_chance(results[0], 3)
