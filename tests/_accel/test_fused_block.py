"""The fused batch norm -> ReLU -> max-pool op and the fused Conv4 forward, against PyTorch's own ops.

Every op test runs twice: through the compiled C++ kernels (``csrc/fused_block.cpp``) and through the
pure-PyTorch fallback (``MEDMETA_KERNELS=torch``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.func import functional_call

from medmeta._accel import kernels as fused_kernels
from medmeta._accel.fused_block import bn_relu_pool, fused_conv4_forward
from medmeta.methods.functional import batchnorm_overrides, channels_last
from medmeta.models.backbones import Conv4, ResNet12
from tests._helpers.fused_block import inputs, native, second_order


@pytest.fixture(params=["kernels", "torch"], autouse=True)
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test on the compiled kernels (which must build where a C++ compiler exists) and on torch."""
    if request.param == "torch":
        monkeypatch.setenv("MEDMETA_KERNELS", "torch")
    else:
        if shutil.which("c++") is None and shutil.which("g++") is None:
            pytest.skip("no C++ compiler on this machine: medmeta uses the PyTorch ops")
        monkeypatch.delenv("MEDMETA_KERNELS", raising=False)
        assert fused_kernels.fused_block_kernels() is not None, "csrc/fused_block.cpp did not compile"
    yield request.param


@pytest.mark.parametrize("shape", [(3, 4, 6, 6), (2, 3, 7, 5), (4, 2, 3, 3)])
def test_value_first_and_second_derivatives_equal_the_builtin_ops(shape: tuple[int, int, int, int]) -> None:
    y, gamma, beta = inputs(shape)
    ours, ref = second_order(bn_relu_pool, y, gamma, beta), second_order(native, y, gamma, beta)
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-12, rtol=0), (a - b).abs().max()


def test_gradcheck_and_gradgradcheck() -> None:
    y, gamma, beta = inputs((2, 3, 5, 4))
    assert torch.autograd.gradcheck(bn_relu_pool, (y, gamma, beta))
    assert torch.autograd.gradgradcheck(bn_relu_pool, (y, gamma, beta))


def test_ties_in_a_window_send_the_gradient_to_the_first_maximum_as_max_pool_does() -> None:
    y, gamma, beta = inputs((2, 2, 4, 4))
    with torch.no_grad():
        y[:, :, :2, :2] = 3.0  # a constant window: every element is the (positive) maximum
        y[0, 1, 2:, 2:] = -1.0
    ours, ref = second_order(bn_relu_pool, y, gamma, beta), second_order(native, y, gamma, beta)
    for a, b in zip(ours, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


def test_float32_statistics_are_as_accurate_as_the_contiguous_builtin() -> None:
    """The built-in channels-last batch norm sums sequentially in float32 (error ~20x the contiguous op's)."""
    g = torch.Generator().manual_seed(0)
    y64 = torch.randn(25, 64, 28, 28, generator=g, dtype=torch.float64) * 0.1 + 10
    gamma, beta = torch.ones(64, dtype=torch.float64), torch.zeros(64, dtype=torch.float64)
    ref = native(y64, gamma, beta)
    ours = bn_relu_pool(y64.float(), gamma.float(), beta.float()).double()
    builtin_contiguous = native(y64.float(), gamma.float(), beta.float()).double()
    err, err_builtin = float((ours - ref).abs().max()), float((builtin_contiguous - ref).abs().max())
    assert err <= 2 * err_builtin, (err, err_builtin)


def test_the_result_can_feed_an_in_place_op_and_is_channels_last() -> None:
    y, gamma, beta = inputs((2, 3, 6, 6))
    out = bn_relu_pool(y, gamma, beta)
    assert out.is_contiguous(memory_format=torch.channels_last)
    out.add_(1.0).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()


@pytest.mark.parametrize("pool_output", [False, True])
def test_fused_conv4_equals_the_module_with_batch_statistics(pool_output: bool) -> None:
    torch.manual_seed(0)
    net = Conv4(in_channels=1, hidden=4, image_size=20, pool_output=pool_output).double()
    x = torch.randn(3, 1, 20, 20, dtype=torch.float64)
    weights = dict(net.named_parameters())
    ours = fused_conv4_forward(net, weights, channels_last(x))
    ref = functional_call(net, (weights, batchnorm_overrides(net)), (x,))  # type: ignore[arg-type]
    assert ours is not None and torch.allclose(ours, ref, atol=1e-12, rtol=0)
    replica = Conv4(in_channels=1, hidden=4, image_size=20, pool_output=pool_output).to_empty(device="meta")
    assert torch.equal(fused_conv4_forward(replica, weights, channels_last(x)), ours)  # structure only


def test_other_backbones_and_changed_blocks_are_not_fused() -> None:
    x = torch.randn(2, 3, 16, 16)
    resnet = ResNet12(in_channels=3)
    assert fused_conv4_forward(resnet, dict(resnet.named_parameters()), x) is None
    net = Conv4(in_channels=3, image_size=16)
    net.features[3] = nn.AvgPool2d(2)
    assert fused_conv4_forward(net, dict(net.named_parameters()), x) is None
    net3d = Conv4(in_channels=1, spatial_dims=3, hidden=4, image_size=16)
    assert fused_conv4_forward(net3d, dict(net3d.named_parameters()), torch.randn(1, 1, 16, 16, 16)) is None
