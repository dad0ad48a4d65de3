"""Superpixels and the self-supervised pseudo-episodes of SSL-ALPNet, on real CT slices."""

from __future__ import annotations

import pytest
import torch

from medmeta.data.segmentation.sources import SegSource
from medmeta.errors import DataError
from medmeta.tasks.superpixels import SuperpixelEpisodes, augment_pair, slic_kmeans


def test_superpixels_follow_an_intensity_edge() -> None:
    img = torch.zeros(16, 16)
    img[:, 8:] = 1.0
    labels = slic_kmeans(img, n_segments=4, compactness=0.1)
    assert labels.shape == (16, 16)
    for k in labels.unique():  # no superpixel straddles the edge
        assert img[labels == k].unique().numel() == 1
    with pytest.raises(DataError, match="2-D"):
        slic_kmeans(img[None])


def test_augmentation_moves_image_and_mask_together() -> None:
    img = torch.zeros(1, 24, 24)
    img[:, 8:16, 8:16] = 1.0
    mask = (img[0] > 0.5).float()
    a_img, a_mask = augment_pair(img, mask, torch.Generator().manual_seed(1))
    b_img, b_mask = augment_pair(img, mask, torch.Generator().manual_seed(1))
    assert torch.equal(a_img, b_img) and torch.equal(a_mask, b_mask)  # seeded
    assert a_img[0][a_mask > 0].mean() > 0.5 > a_img[0][a_mask == 0].mean()


def test_pseudo_episodes_are_seeded_and_avoid_excluded_regions(seg_sources: dict[str, SegSource]) -> None:
    ct = seg_sources["ct"]
    liver = ct.structures["ct:liver"]
    exclude = torch.zeros(ct.images.shape[0], 32, 32)
    exclude[list(liver.pool_index)] = liver.masks
    eps = SuperpixelEpisodes(ct.images, n_shot=2, n_query=3, seed=5, min_area=8, exclude=exclude)
    a, b = eps(3), SuperpixelEpisodes(ct.images, n_shot=2, n_query=3, seed=5, min_area=8, exclude=exclude)(3)
    assert torch.equal(a.support_masks, b.support_masks) and torch.equal(a.query_images, b.query_images)
    assert a.support_images.shape == (2, 1, 32, 32) and a.query_masks is not None
    assert a.query_masks.shape == (3, 32, 32)
    for i in range(ct.images.shape[0]):
        for m in eps.candidates(i):
            assert float((m * exclude[i]).sum()) <= 0.1 * float(m.sum())


def test_pseudo_episode_errors_name_the_problem() -> None:
    with pytest.raises(DataError, match=r"\(N, C, H, W\) with N >= 1"):
        SuperpixelEpisodes(torch.zeros(0, 1, 8, 8))
    with pytest.raises(DataError, match="exclude masks"):
        SuperpixelEpisodes(torch.rand(2, 1, 8, 8), exclude=torch.zeros(2, 4, 4))
    with pytest.raises(DataError, match="no usable superpixel"):
        SuperpixelEpisodes(torch.zeros(2, 1, 8, 8))(0)  # all dark: nothing to pick
