from __future__ import annotations

import pytest
import torch

from medmeta.errors import MedmetaError
from medmeta.tasks.episode import Episode, Support
from tests._helpers.episodes import make_episode


def test_episode_exposes_n_way_and_support() -> None:
    ep = make_episode(n_way=4, n_shot=2, n_query=3)
    assert ep.n_way == 4
    assert ep.support.images.shape == (8, 3, 16, 16)
    assert ep.support.n_way == 4


def test_labels_must_be_int64() -> None:
    ep = make_episode()
    with pytest.raises(MedmetaError, match="must be int64"):
        Episode(ep.support_images, ep.support_labels.int(), ep.query_images, ep.query_labels, ep.class_ids)


def test_labels_outside_zero_to_n_way_are_rejected() -> None:
    ep = make_episode(n_way=3)
    bad = ep.support_labels.clone()
    bad[0] = 7
    with pytest.raises(MedmetaError, match=r"must lie in 0..2 \(n_way=3\), got values 0..7"):
        Episode(ep.support_images, bad, ep.query_images, ep.query_labels, ep.class_ids)


def test_a_class_without_support_images_is_rejected() -> None:
    with pytest.raises(MedmetaError, match=r"no image of class id\(s\) \[1\]"):
        Support(torch.zeros(2, 1, 4, 4), torch.tensor([0, 0]), n_way=2)


def test_support_and_query_of_different_image_shapes_are_rejected() -> None:
    ep = make_episode()
    with pytest.raises(MedmetaError, match="differ in shape"):
        Episode(ep.support_images, ep.support_labels, ep.query_images[..., :8], ep.query_labels, ep.class_ids)


def test_image_and_label_counts_must_match() -> None:
    ep = make_episode()
    with pytest.raises(MedmetaError, match="images but"):
        Episode(ep.support_images[:-1], ep.support_labels, ep.query_images, ep.query_labels, ep.class_ids)


def test_map_images_transforms_support_and_query_only() -> None:
    ep = make_episode()
    doubled = ep.map_images(lambda x: 2 * x)
    torch.testing.assert_close(doubled.query_images, 2 * ep.query_images)
    assert doubled.support_labels is ep.support_labels
