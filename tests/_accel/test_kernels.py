"""The compiled kernels of the fused Conv4 block: equal to the PyTorch ops, deterministic, and a failed
compile that falls back with one warning."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

from medmeta._accel import kernels as fused_kernels
from medmeta._accel.fused_block import bn_relu_pool
from tests._helpers.fused_block import inputs, native, second_order


@pytest.fixture(autouse=True)
def compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine: medmeta uses the PyTorch ops")
    monkeypatch.delenv("MEDMETA_KERNELS", raising=False)
    assert fused_kernels.fused_block_kernels() is not None, "csrc/fused_block.cpp did not compile"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 8, 10, 10), (3, 6, 7, 9), (2, 3, 2, 3)])
def test_kernels_equal_the_pytorch_ops(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, shape: tuple[int, int, int, int]
) -> None:
    """Value, first and second derivatives of the compiled kernels against the pure-PyTorch version."""
    y, gamma, beta = (t.detach().to(dtype).requires_grad_(True) for t in inputs(shape, seed=3))
    ours = second_order(bn_relu_pool, y, gamma, beta)
    monkeypatch.setenv("MEDMETA_KERNELS", "torch")
    ref = second_order(bn_relu_pool, y, gamma, beta)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == dtype and a.shape == b.shape
        assert torch.allclose(a, b, atol=tol, rtol=tol), (a - b).abs().max()


def test_kernels_give_identical_results_on_every_run_with_two_threads() -> None:
    """Reductions sum fixed row ranges in a fixed order: no dependence on thread timing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        y, gamma, beta = (t.detach().float().requires_grad_(True) for t in inputs((16, 32, 14, 14), seed=4))
        runs = [second_order(bn_relu_pool, y, gamma, beta) for _ in range(3)]
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other, strict=True))


def test_a_failed_compile_warns_once_and_falls_back_to_the_pytorch_ops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch.utils.cpp_extension as cpp

    def broken(**_: object) -> None:
        raise RuntimeError("Ninja is required to load C++ extensions\nmore detail")

    monkeypatch.setattr(cpp, "load", broken)
    monkeypatch.setattr(fused_kernels, "_LOADED", {})
    with pytest.warns(RuntimeWarning, match=r"could not compile fused_block\.cpp \(Ninja is required"):
        assert fused_kernels.fused_block_kernels() is None
    assert fused_kernels.fused_block_kernels() is None  # cached: no second attempt, no second warning
    y, gamma, beta = inputs((2, 3, 4, 4))
    assert torch.allclose(bn_relu_pool(y, gamma, beta), native(y, gamma, beta), atol=1e-12)


def test_without_ninja_one_warning_names_the_accel_extra_and_the_pytorch_ops_are_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fused_kernels.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "ninja", None)  # import ninja raises ImportError
    monkeypatch.setattr(fused_kernels, "_LOADED", {})
    with pytest.warns(RuntimeWarning, match=r"ninja is not installed.*pip install medmeta\[accel\]"):
        assert fused_kernels.fused_block_kernels() is None
    assert fused_kernels.fused_block_kernels() is None  # cached: no second warning
    y, gamma, beta = inputs((2, 3, 4, 4))
    assert torch.allclose(bn_relu_pool(y, gamma, beta), native(y, gamma, beta), atol=1e-12)


def test_medmeta_kernels_torch_never_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDMETA_KERNELS", "torch")
    monkeypatch.setattr(fused_kernels, "_compile", lambda: pytest.fail("compiled despite MEDMETA_KERNELS"))
    assert fused_kernels.fused_block_kernels() is None
