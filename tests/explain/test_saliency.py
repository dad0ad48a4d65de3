"""Grad-CAM and input-gradient saliency against toy models whose evidence sits in a known place."""

from __future__ import annotations

import torch
from torch import nn

from medmeta.explain import grad_cam, input_gradient, last_conv, nearest_support, saliency


class CornerModel(nn.Module):
    """Class 0's logit is the mean activation of the top-left quadrant, class 1's of the bottom-right."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))  # (N, 2, H, W)
        s = x.shape[-1] // 2
        return torch.stack([h[:, 0, :s, :s].mean((1, 2)), h[:, 1, s:, s:].mean((1, 2))], dim=1)  # (N, 2)


class BrightnessModel(nn.Module):
    """Class 0's logit is the mean of a ReLU'd 1x1 convolution (brightness); class 1's is its negative."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).mean((1, 2, 3))  # (N,)
        return torch.stack([h, -h], dim=1)  # (N, 2)


def test_grad_cam_points_at_the_evidence_for_the_explained_class() -> None:
    x = torch.zeros(2, 1, 8, 8)
    x[0, :, 1:3, 1:3] = 1.0  # a bright patch top-left
    x[1, :, 5:7, 4:6] = 1.0  # and bottom-right
    model = BrightnessModel()
    maps = grad_cam(model, model.conv, x, torch.tensor([0, 0]))
    assert maps.shape == (2, 8, 8) and float(maps.max()) == 1.0
    for i, (r, c) in enumerate([(1, 1), (5, 4)]):
        peak = divmod(int(maps[i].argmax()), 8)
        assert r <= peak[0] <= r + 1 and c <= peak[1] <= c + 1, peak
    # no evidence for class 1 anywhere: the ReLU of negative weights leaves an all-zero map
    assert float(grad_cam(model, model.conv, x, torch.tensor([1, 1])).abs().max()) == 0.0


def test_input_gradient_is_zero_outside_the_explained_region() -> None:
    model = CornerModel()
    maps = input_gradient(model, torch.rand(1, 1, 8, 8) + 0.1, torch.tensor([1]))
    assert torch.all(maps[0, :4, :] == 0) and torch.all(maps[0, 4:, 4:] > 0)


def test_saliency_falls_back_to_gradients_without_a_convolution() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    assert last_conv(model) is None
    maps, name = saliency(model, model, torch.rand(2, 1, 4, 4), torch.tensor([0, 2]))
    assert name == "input gradient" and maps.shape == (2, 4, 4)
    conv_model = CornerModel()
    assert saliency(conv_model, conv_model, torch.rand(1, 1, 8, 8), torch.tensor([0]))[1] == "Grad-CAM"


def test_grad_cam_removes_its_hook() -> None:
    model = CornerModel()
    grad_cam(model, model.conv, torch.rand(1, 1, 8, 8), torch.tensor([0]))
    assert not model.conv._forward_hooks


def test_nearest_support_matches_a_brute_force_search() -> None:
    g = torch.Generator().manual_seed(0)
    q, s = torch.randn(5, 7, generator=g), torch.randn(11, 7, generator=g)
    dist, idx = nearest_support(q, s, k=3)
    full = ((q[:, None] - s[None]) ** 2).sum(-1).sqrt()  # (5, 11)
    expected = full.sort(dim=1)
    torch.testing.assert_close(idx, expected.indices[:, :3])
    torch.testing.assert_close(dist, expected.values[:, :3])
    assert nearest_support(q, s[:2], k=3)[0].shape == (5, 2)
