"""Registration metrics against hand-computed fields and label maps."""

from __future__ import annotations

import math

import pytest
import torch

from medmeta.data.deformations import identity_grid
from medmeta.eval.registration import (
    endpoint_error,
    folding_fraction,
    jacobian_determinant,
    label_dice,
    label_hd95,
    score_pairs,
)


def test_jacobian_of_a_linear_field_is_the_hand_computed_constant() -> None:
    grid = identity_grid((9, 11))  # (2, H, W)
    a, b, c, d = 0.1, -0.3, 0.2, 0.05
    u = torch.stack([a * grid[0] + b * grid[1], c * grid[0] + d * grid[1]])[None].double()
    det = jacobian_determinant(u)
    expected = (1 + a) * (1 + d) - b * c  # 1.1 * 1.05 - (-0.3 * 0.2) = 1.215
    assert det.shape == (1, 9, 11)
    torch.testing.assert_close(det, torch.full_like(det, expected))
    assert abs(expected - 1.215) < 1e-12


def test_jacobian_of_a_quadratic_field_uses_central_differences() -> None:
    grid = identity_grid((7, 7)).double()
    u = torch.stack([0.1 * grid[0] ** 2, torch.zeros(7, 7, dtype=torch.float64)])[None]
    det = jacobian_determinant(u)[0]
    # d(0.1 x^2)/dx by central differences is exactly 0.2 x inside; det = 1 + 0.2 x
    torch.testing.assert_close(det[1:-1], (1 + 0.2 * grid[0])[1:-1])


def test_jacobian_in_3d_is_the_determinant_of_identity_plus_gradient() -> None:
    grid = identity_grid((5, 6, 7)).double()
    m = torch.tensor([[0.1, 0.2, 0.0], [0.0, -0.5, 0.3], [0.4, 0.0, 0.1]], dtype=torch.float64)
    u = torch.einsum("ij,j...->i...", m, grid)[None]  # u = M x
    det = jacobian_determinant(u)
    torch.testing.assert_close(
        det, torch.full_like(det, float(torch.linalg.det(torch.eye(3) + m.float()))), atol=1e-6, rtol=0
    )


def test_folding_counts_exactly_the_pixels_of_a_known_fold() -> None:
    u = torch.zeros(1, 2, 10, 10, dtype=torch.float64)
    # u0 = -2 (x0 - 3) on rows 3..6, -6 below: central differences give slope -1 on rows 3 and 6
    # (det 0, a collapse, counted) and -2 on rows 4 and 5 (det -1): 4 rows of 10 pixels fold
    grid = identity_grid((10, 10)).double()
    u[0, 0] = torch.where(
        (grid[0] >= 3) & (grid[0] <= 6), -2 * (grid[0] - 3), torch.zeros(10, 10, dtype=torch.float64)
    )
    u[0, 0][grid[0] > 6] = -6.0
    det = jacobian_determinant(u)[0]
    folded = det <= 0
    assert folded.sum() == 40
    assert float(folding_fraction(u)[0]) == pytest.approx(0.4)
    assert float(folding_fraction(torch.zeros(2, 2, 8, 8))[1]) == 0.0


def test_endpoint_error_is_the_mean_euclidean_distance() -> None:
    u = torch.zeros(1, 2, 4, 4)
    v = torch.zeros(1, 2, 4, 4)
    v[0, 0, :2] = 3.0
    v[0, 1, :2] = 4.0  # |(3, 4)| = 5 on half the pixels
    assert float(endpoint_error(u, v)[0]) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="differ in shape"):
        endpoint_error(u, torch.zeros(1, 2, 4, 5))


def test_label_dice_averages_the_labels_of_the_fixed_map() -> None:
    fixed = torch.zeros(1, 4, 4, dtype=torch.long)
    fixed[0, :2, :2] = 1  # 4 pixels
    fixed[0, 2:, 2:] = 2  # 4 pixels
    warped = fixed.clone()
    warped[0, 2:, 2:] = 0
    warped[0, 2:, 3] = 2  # 2 of the 4 pixels of label 2: Dice 2*2/(2+4) = 2/3
    assert float(label_dice(warped, fixed)[0]) == pytest.approx((1 + 2 / 3) / 2)
    assert math.isnan(float(label_dice(warped, fixed, min_pixels=5)[0]))  # no label has 5 pixels
    assert float(label_hd95(fixed, fixed)[0]) == 0.0


def test_score_pairs_gives_every_metric_that_applies() -> None:
    labels = torch.zeros(2, 2, 12, 12, dtype=torch.long)
    labels[:, :, 3:8, 3:8] = 1
    scores = score_pairs(torch.zeros(2, 2, 12, 12), labels, torch.zeros(2, 2, 12, 12))
    assert set(scores) == {"folding", "epe", "dice", "hd95"}
    assert torch.equal(scores["dice"], torch.ones(2, dtype=torch.float64))
    assert set(score_pairs(torch.zeros(1, 2, 8, 8))) == {"folding"}
    with pytest.raises(ValueError, match="ddf must be"):
        jacobian_determinant(torch.zeros(1, 3, 8, 8))
