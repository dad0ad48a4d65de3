"""Registration episodes: validation of pairs, and seeded pair samplers on a small synthetic pool."""

from __future__ import annotations

import pytest
import torch

from medmeta.data.deformations import warp
from medmeta.data.registration import RegPool
from medmeta.errors import DataError
from medmeta.tasks.registration import InterleavedSampler, PairEpisode, PairSampler, PairSupport


def pool(n: int = 6, groups: int = 2) -> RegPool:
    g = torch.Generator().manual_seed(0)
    images = torch.rand((n, 1, 17, 18), generator=g)
    labels = torch.randint(0, 3, (n, 17, 18), generator=g)
    names = tuple(f"g{i % groups}" for i in range(n))
    return RegPool("toy", images, labels, names, tuple(i // groups for i in range(n)))


def test_synthetic_pairs_are_the_moving_image_warped_by_the_returned_field() -> None:
    sampler = PairSampler(pool(), "synthetic", n_query=2, seed=1, magnitude=2.0)
    ep = sampler.episode(0)
    assert ep.query_images.shape == (2, 2, 17, 18) and ep.query_flows is not None
    torch.testing.assert_close(ep.query_images[:, 1:], warp(ep.query_images[:, :1], ep.query_flows))
    assert ep.query_labels is not None
    expected = warp(ep.query_labels[:, :1].float(), ep.query_flows, mode="nearest").long()
    assert torch.equal(ep.query_labels[:, 1:], expected)
    assert ep.support_images is ep.query_images  # instance optimisation adapts on the pairs it registers


def test_the_same_seed_gives_the_same_episode_and_another_seed_another() -> None:
    a = PairSampler(pool(), "synthetic", seed=3).episode(5)
    b = PairSampler(pool(), "synthetic", seed=3).episode(5)
    c = PairSampler(pool(), "synthetic", seed=4).episode(5)
    assert torch.equal(a.query_images, b.query_images) and not torch.equal(a.query_images, c.query_images)


def test_inverted_contrast_gives_one_minus_the_warped_image() -> None:
    same = PairSampler(pool(), "synthetic", seed=2).episode(0)
    inv = PairSampler(pool(), "synthetic", seed=2, contrast="invert").episode(0)
    torch.testing.assert_close(inv.query_images[:, 1], 1 - same.query_images[:, 1])


def test_slice_pairs_come_from_one_group_within_the_gap() -> None:
    p = pool(12, 2)
    sampler = PairSampler(p, "slices", n_query=8, max_gap=1, seed=0)
    ep = sampler.episode(0)
    for pair in ep.query_images:
        a = next(i for i in range(len(p)) if torch.equal(p.images[i, 0], pair[0]))
        b = next(i for i in range(len(p)) if torch.equal(p.images[i, 0], pair[1]))
        assert a != b and p.groups[a] == p.groups[b] and abs(p.positions[a] - p.positions[b]) <= 1
    assert ep.query_flows is None


def test_subject_pairs_match_the_body_level_and_the_moving_group() -> None:
    p = RegPool(
        "two",
        torch.arange(7.0).view(7, 1, 1, 1).expand(7, 1, 8, 8).clone(),
        None,
        ("ct/a",) * 4 + ("mr/b",) * 3,
        (0, 1, 2, 3, 0, 1, 2),
    )
    sampler = PairSampler(p, "subjects", n_query=6, match_position=True, moving_from="mr/", seed=0)
    ep = sampler.episode(0)
    pairs = {(int(m[0, 0]), int(f[0, 0])) for m, f in ep.query_images}
    assert pairs <= {(4, 0), (5, 1), (5, 2), (6, 3)}  # relative levels 0, 1/2, 1 of MR matched to CT


def test_bad_pairs_and_options_are_refused_with_what_to_do() -> None:
    with pytest.raises(DataError, match=r"\(N, 2, H, W\)"):
        PairSupport(torch.rand(1, 3, 8, 8))
    with pytest.raises(DataError, match="int64 label maps"):
        PairSupport(torch.rand(1, 2, 8, 8), torch.zeros(1, 2, 8, 8))
    with pytest.raises(DataError, match="fields must be"):
        PairEpisode(torch.rand(1, 2, 8, 8), None, torch.rand(1, 2, 8, 8), None, torch.zeros(1, 3, 8, 8))
    with pytest.raises(DataError, match="one group"):
        PairSampler(pool(4, 1), "subjects")
    with pytest.raises(DataError, match="unknown pair mode"):
        PairSampler(pool(), "random")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="moving_from"):
        PairSampler(pool(), "subjects", moving_from="xx/")


def test_interleaved_sampler_takes_its_samplers_in_turn() -> None:
    a = PairSampler(pool(), "synthetic", seed=0)
    b = PairSampler(pool(), "slices", seed=0)
    mixed = InterleavedSampler([a, b], n_episodes=4)
    assert torch.equal(mixed.episode(2).query_images, a.episode(1).query_images)
    assert torch.equal(mixed.episode(3).query_images, b.episode(1).query_images)
    assert len(list(mixed)) == 4
