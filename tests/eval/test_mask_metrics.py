"""Dice and HD95 against hand-computed cases, and the scipy implementation against MONAI's."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from medmeta.eval.mask_metrics import dice, hd95, summarize


def _mask(points: list[tuple[int, int]], size: int = 10) -> torch.Tensor:
    m = torch.zeros(1, size, size, dtype=torch.bool)
    for y, x in points:
        m[0, y, x] = True
    return m


def test_dice_of_hand_made_masks() -> None:
    a = torch.zeros(2, 4, 4)
    b = torch.zeros(2, 4, 4)
    a[0, :2] = 1  # 8 pixels
    b[0, 1:3] = 1  # 8 pixels, 4 shared
    # image 1: both empty
    assert dice(a, b).tolist() == [0.5, 1.0]
    with pytest.raises(ValueError, match="same shape"):
        dice(a, b[:1])


@pytest.mark.parametrize("backend", ["scipy", "monai"])
def test_hd95_of_single_pixels_is_their_euclidean_distance(backend: str) -> None:
    if backend == "monai" and importlib.util.find_spec("monai") is None:
        pytest.skip("monai not installed")
    assert hd95(_mask([(0, 0)]), _mask([(3, 4)]), backend=backend).item() == pytest.approx(5.0)


@pytest.mark.parametrize("backend", ["scipy", "monai"])
def test_hd95_of_a_line_shifted_by_two(backend: str) -> None:
    if backend == "monai" and importlib.util.find_spec("monai") is None:
        pytest.skip("monai not installed")
    # a 1-pixel-wide vertical line (all boundary) and the same line two columns to the right: every
    # boundary pixel is 2 away from the other line
    a = _mask([(y, 2) for y in range(1, 9)])
    b = _mask([(y, 4) for y in range(1, 9)])
    assert hd95(a, b, backend=backend).item() == pytest.approx(2.0)
    assert hd95(a, a, backend=backend).item() == 0.0


def test_hd95_ignores_a_few_far_outliers_but_hausdorff_does_not() -> None:
    # 40 boundary pixels on a 10x10 square vs the same square plus one far pixel
    square = [(y, x) for y in range(20, 30) for x in range(20, 30)]
    a = _mask(square, 64)
    b = _mask([*square, (60, 60)], 64)
    assert hd95(a, b, backend="scipy").item() == 0.0
    assert hd95(a, b, percentile=100, backend="scipy").item() == pytest.approx(
        math.hypot(31, 31)
    )  # to (29, 29)


def test_empty_masks_give_zero_or_undefined_distance() -> None:
    empty = torch.zeros(1, 5, 5, dtype=torch.bool)
    one = _mask([(2, 2)], 5)
    assert hd95(empty, empty).item() == 0.0
    assert math.isnan(hd95(one, empty).item()) and math.isnan(hd95(empty, one).item())
    with pytest.raises(ValueError, match="backend must be"):
        hd95(one, one, backend="nope")


@pytest.mark.skipif(importlib.util.find_spec("monai") is None, reason="monai not installed")
def test_own_hd95_matches_monai_on_random_blobs() -> None:
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(6, 1, 24, 24, generator=g)
    blobs = torch.nn.functional.avg_pool2d(noise, 5, 1, 2)[:, 0] > 0.5  # (6, 24, 24)
    a, b = blobs[:3], blobs[3:]
    torch.testing.assert_close(hd95(a, b, backend="scipy"), hd95(a, b, backend="monai"), rtol=1e-5, atol=1e-5)


def test_summary_counts_undefined_values() -> None:
    s = summarize([1.0, 3.0, float("nan")])
    assert s["mean"] == 2.0 and s["n"] == 2 and s["n_undefined"] == 1
    assert s["ci95"] == pytest.approx(1.96 * math.sqrt(2) / math.sqrt(2))
