"""Full-resolution segmentation: window starts, support patches, and MONAI's blended sliding window on cases
whose answer is known by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmeta.deploy.sliding import patch_starts, sliding_probability, support_patches
from medmeta.errors import DataError

pytest.importorskip("monai", reason="MONAI is not installed (pip install 'medmeta[monai]')")


class Echo:
    """A predictor whose foreground probability is the window's own pixel intensity."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:  # (n, 1, s, s) -> logits (n, 2, s, s)
        p = x.clamp(1e-4, 1 - 1e-4)
        return torch.cat([torch.log1p(-p), torch.log(p)], dim=1)


class Constant:
    def __init__(self, value: float) -> None:
        self.value = value

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        logit = torch.logit(torch.tensor(self.value))
        return torch.cat([torch.zeros_like(x), torch.full_like(x, float(logit))], dim=1)


def test_window_starts_cover_the_length_with_the_overlap() -> None:
    assert patch_starts(10, 4, 0.5) == [0, 2, 4, 6]
    assert patch_starts(10, 4, 0.25) == [0, 3, 6]
    assert patch_starts(11, 4, 0.0) == [0, 4, 7]  # the last window ends at the edge
    assert patch_starts(5, 8, 0.25) == [0]


def test_blending_identical_window_outputs_gives_them_back_exactly() -> None:
    """Every window returns its own pixels (patch = working size: no resizing), so any weighted blend of the
    overlapping windows is the image itself, borders and corners included."""
    plane = np.random.default_rng(0).uniform(0.05, 0.95, size=(37, 53)).astype(np.float32)
    prob = sliding_probability(Echo(), plane, patch=16, size=16, overlap=0.5)
    assert prob.shape == plane.shape
    np.testing.assert_allclose(prob, plane, atol=1e-4)
    small = sliding_probability(Echo(), plane[:10, :12], patch=16, size=16)  # smaller than one window
    np.testing.assert_allclose(small, plane[:10, :12], atol=1e-4)
    np.testing.assert_allclose(sliding_probability(Constant(0.3), plane, patch=16, size=8), 0.3, atol=1e-5)


def test_support_patches_keep_windows_with_foreground_at_the_working_size() -> None:
    image = np.zeros((40, 40), dtype=np.float32)
    mask = np.zeros((40, 40), dtype=np.float32)
    mask[2:6, 2:6] = 1  # only in the top-left window of 20 px
    xs, ys = support_patches([(image, mask)], patch=20, size=8, overlap=0.0)
    assert xs.shape == (1, 1, 8, 8) and ys.shape == (1, 8, 8) and ys.sum() > 0
    with pytest.raises(DataError, match="use a larger --patch"):
        support_patches([(image, np.zeros_like(mask))], patch=20, size=8)
