from __future__ import annotations

import numpy as np
import pytest
import torch

from medmeta.data.datasets import ImageDataset
from medmeta.data.synthetic import make_synthetic
from medmeta.errors import DataError, MedmetaError
from medmeta.tasks.collate import collate_episodes
from medmeta.tasks.sampler import EpisodeSampler, MultiDomainSampler


@pytest.fixture(scope="module")
def synth() -> ImageDataset:
    return make_synthetic(n_classes=10, n_per_class=25, image_size=16)


def test_same_seed_gives_identical_episodes(synth: ImageDataset) -> None:
    a = EpisodeSampler(synth, 5, 2, 3, seed=7).episode(11)
    b = EpisodeSampler(synth, 5, 2, 3, seed=7).episode(11)
    assert torch.equal(a.support_images, b.support_images)
    assert torch.equal(a.query_images, b.query_images)
    assert torch.equal(a.class_ids, b.class_ids)


def test_different_seeds_or_indices_give_different_episodes(synth: ImageDataset) -> None:
    s = EpisodeSampler(synth, 5, 2, 3, seed=7)
    other = EpisodeSampler(synth, 5, 2, 3, seed=8)
    assert not torch.equal(s.episode(0).support_images, s.episode(1).support_images)
    assert not torch.equal(s.episode(0).support_images, other.episode(0).support_images)


def test_episode_has_the_requested_shape_and_uint8_images(synth: ImageDataset) -> None:
    ep = EpisodeSampler(synth, 4, 3, 5, seed=0).episode(0)
    assert ep.support_images.shape == (12, 3, 16, 16)
    assert ep.query_images.shape == (20, 3, 16, 16)
    assert ep.support_images.dtype == torch.uint8
    assert ep.support_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_support_and_query_images_are_disjoint_and_of_the_labelled_class(synth: ImageDataset) -> None:
    sampler = EpisodeSampler(synth, 5, 2, 3, seed=3)
    for i in range(20):
        s_idx, q_idx, classes = sampler.indices(i)
        assert not set(s_idx) & set(q_idx)
        assert np.array_equal(synth.labels[s_idx], np.repeat(classes, 2))
        assert np.array_equal(synth.labels[q_idx], np.repeat(classes, 3))


def test_n_way_none_uses_every_class(synth: ImageDataset) -> None:
    assert EpisodeSampler(synth, None, 1, 1).episode(0).n_way == 10


def test_a_class_with_too_few_images_is_named(synth: ImageDataset) -> None:
    with pytest.raises(
        DataError,
        match=r"'disc-f2-o0' has 25 images, .* and 6 more classes, fewer than n_shot \+ n_query = 5 \+ 21",
    ):
        EpisodeSampler(synth, 5, 5, 21)


def test_fewer_classes_than_n_way_is_an_error(synth: ImageDataset) -> None:
    with pytest.raises(
        DataError, match="has 10 classes, fewer than n_way=12: lower --n-way, use --n-way all"
    ):
        EpisodeSampler(synth, 12, 1, 1)


def test_class_disjoint_selection_never_mixes_classes(synth: ImageDataset) -> None:
    train = synth.select_classes(list(synth.class_names[:6]))
    test = synth.select_classes(list(synth.class_names[6:]))
    assert not set(train.class_names) & set(test.class_names)
    ep = EpisodeSampler(test, None, 1, 2).episode(0)
    assert ep.n_way == 4


def test_multi_domain_sampler_gives_variable_ways(synth: ImageDataset) -> None:
    small = synth.select_classes(list(synth.class_names[:3]))
    sampler = MultiDomainSampler([synth, small], None, 1, 2, seed=0)
    ways = {sampler.episode(i).n_way for i in range(40)}
    assert ways == {3, 10}


def test_a_batch_stacks_to_tasks_by_way_times_shot(synth: ImageDataset) -> None:
    sampler = MultiDomainSampler([synth], 5, 2, 3, seed=0)
    batch = collate_episodes(sampler.batch(0, 4))
    assert batch.support_images.shape == (4, 10, 3, 16, 16)
    assert batch.query_labels.shape == (4, 15)
    assert len(batch.episodes()) == 4


def test_collating_episodes_of_different_shapes_is_an_error(synth: ImageDataset) -> None:
    a = EpisodeSampler(synth, 5, 2, 3).episode(0)
    b = EpisodeSampler(synth, 4, 2, 3).episode(0)
    with pytest.raises(MedmetaError, match="batch only episodes of one n_way"):
        collate_episodes([a, b])
