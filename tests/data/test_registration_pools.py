"""Registration pools: real CT/MR slices with label maps in one orientation, brain MRI, label renumbering."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medmeta.data.registration import RegPool, cross_modal_pool, load_brain_pool, load_pool, relabel
from medmeta.data.segmentation.labels import TOTAL_CT
from medmeta.errors import DataError


def test_relabel_renumbers_by_name_and_drops_unknown_classes() -> None:
    labels = torch.tensor([[0, 1, 2, 3]])
    out = relabel(labels, ("liver", "brain", "spleen"), ("spleen", "kidney", "liver"))
    assert out.tolist() == [[0, 3, 0, 1]]


def test_pool_checks_its_parts() -> None:
    with pytest.raises(DataError, match=r"\(M, 1, H, W\)"):
        RegPool("x", torch.rand(2, 3, 8, 8), None, ("a", "b"), (0, 1))
    with pytest.raises(DataError, match="one group and position per image"):
        RegPool("x", torch.rand(2, 1, 8, 8), None, ("a",), (0, 1))


def centroid(mask: torch.Tensor) -> torch.Tensor:
    """In-plane centroid ``(axis 0, axis 1)`` of a ``(K, H, W)`` stack of masks."""
    return torch.nonzero(mask).double()[:, 1:].mean(0)  # (2,)


def test_ct_and_mr_slices_share_one_orientation(seg_root: Path) -> None:
    pool = cross_modal_pool(seg_root, 64)
    assert pool.labels is not None
    liver = TOTAL_CT.index("liver") + 1
    spine = TOTAL_CT.index("spinal_cord") + 1
    ct = [i for i, g in enumerate(pool.groups) if g.startswith("ct/")]
    mr = [i for i, g in enumerate(pool.groups) if g.startswith("mr/")]
    assert len(ct) == 30 and len(mr) == 20
    for group in (ct, mr):
        labels = pool.labels[torch.tensor(group)]
        offset = centroid(labels == liver) - centroid(labels == spine)  # (axis 0, axis 1)
        # canonical RAS (axis 0 towards the patient's right, axis 1 anterior): the liver lies to the right of
        # and in front of the spinal cord in both volumes
        assert offset[0] > 3 and offset[1] > 3, offset


def test_volume_and_brain_pools_have_images_in_unit_range(seg_root: Path) -> None:
    ct = load_pool("ct", seg_root, 32)
    assert ct.images.shape == (30, 1, 32, 32) and ct.labels is not None and ct.labels.shape == (30, 32, 32)
    assert float(ct.images.min()) >= 0.0 and float(ct.images.max()) <= 1.0
    assert len(ct.labels.unique()) > 10
    brain = load_brain_pool(seg_root, "test", 32, 5, seed=1)
    assert brain.images.shape == (5, 1, 32, 32) and brain.labels is None and len(set(brain.groups)) == 5
    assert brain.groups == load_brain_pool(seg_root, "test", 32, 5, seed=1).groups
    with pytest.raises(DataError, match="unknown registration pool"):
        load_pool("xray", seg_root, 32)
