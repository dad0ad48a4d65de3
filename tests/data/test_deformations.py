"""Synthetic deformations: the plain warp against analytic displacements and MONAI's Warp, seeded fields."""

from __future__ import annotations

import pytest
import torch

from medmeta.data.deformations import identity_grid, random_smooth_field, warp
from medmeta.errors import DataError


def ramp(shape: tuple[int, ...], axis: int) -> torch.Tensor:
    """``(1, 1, *shape)`` image whose value is the voxel index along `axis`."""
    return identity_grid(shape)[axis][None, None]


@pytest.mark.parametrize("shape", [(33, 34), (9, 10, 11)])
def test_warp_of_a_ramp_by_a_constant_shift_adds_the_shift_inside_the_image(shape: tuple[int, ...]) -> None:
    ndim = len(shape)
    shift = torch.tensor([1.5, -2.25, 0.75][:ndim])
    ddf = shift.view(1, ndim, *([1] * ndim)).expand(1, ndim, *shape).clone()
    for axis in range(ndim):
        moved = warp(ramp(shape, axis), ddf)[0, 0]  # moving(x + u) = x_axis + u_axis where not clamped
        inner = tuple(slice(3, s - 3) for s in shape)
        expected = identity_grid(shape)[axis][inner] + shift[axis]
        torch.testing.assert_close(moved[inner], expected, atol=1e-4, rtol=0)


def test_warp_of_a_ramp_by_a_rotation_field_gives_the_rotated_coordinate() -> None:
    shape = (41, 41)
    grid = identity_grid(shape)  # (2, H, W)
    c = 20.0
    theta = torch.tensor(0.1)
    y, x = grid[0] - c, grid[1] - c
    target = torch.stack(
        [c + torch.cos(theta) * y - torch.sin(theta) * x, c + torch.sin(theta) * y + torch.cos(theta) * x]
    )
    ddf = (target - grid)[None]  # (1, 2, H, W): x + u(x) is the rotated point
    moved = warp(ramp(shape, 0), ddf)[0, 0]
    inner = (slice(12, 29), slice(12, 29))
    torch.testing.assert_close(moved[inner], target[0][inner], atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", [(33, 34), (9, 10, 11)])
def test_warp_matches_monai_warp_on_a_random_field(shape: tuple[int, ...]) -> None:
    from monai.networks.blocks import Warp

    g = torch.Generator().manual_seed(0)
    image = torch.rand((2, 1, *shape), generator=g)
    ddf = random_smooth_field(shape, magnitude=3.0, generator=g, n=2)
    torch.testing.assert_close(warp(image, ddf), Warp("bilinear", "border")(image, ddf), atol=1e-5, rtol=0)


def test_random_smooth_field_is_seeded_and_zero_on_the_border() -> None:
    a = random_smooth_field((33, 34), magnitude=2.0, generator=torch.Generator().manual_seed(3), n=2)
    b = random_smooth_field((33, 34), magnitude=2.0, generator=torch.Generator().manual_seed(3), n=2)
    c = random_smooth_field((33, 34), magnitude=2.0, generator=torch.Generator().manual_seed(4), n=2)
    assert a.shape == (2, 2, 33, 34)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a[..., 0, :].abs().max() < 1e-5 and a[..., :, -1].abs().max() < 1e-5
    assert a.abs().max() > 0.1


def test_bad_fields_are_refused_with_the_expected_shape() -> None:
    with pytest.raises(DataError, match=r"ddf must be \(1, 2, 8, 8\)"):
        warp(torch.rand(1, 1, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(DataError, match="control_points >= 3"):
        random_smooth_field((8, 8), magnitude=1.0, control_points=2)
    with pytest.raises(DataError, match="2-D or 3-D"):
        random_smooth_field((8,), magnitude=1.0)
