"""Two gloo ranks on loopback: the all-reduced sharded meta-gradient is the single process's, in float64.

Every case meta-trains one float64 meta-batch of synthetic 3-way 2-shot tasks with a small Conv4, once in
this process on the whole batch and once on two spawned ranks that each take their block of it
(`EpisodicBatches.shard` + `RankSync`, as the training loop does); every parameter's gradient, the loss and
(where exact) the buffers must agree within 1e-10.
"""

from __future__ import annotations

import pytest
import torch

from tests._helpers.distributed import CASES, meta_batch_step, sharded_steps

TOLERANCE = 1e-10
NAMES = [c[0] for c in CASES]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Every case on 2 gloo ranks (one spawn for all of them: process start-up dominates)."""
    return sharded_steps(tmp_path_factory.mktemp("ranks"), NAMES)


def _assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], prefix: str) -> None:
    keys = {k for k in want if k.startswith(prefix)}
    assert {k for k in got if k.startswith(prefix)} == keys
    assert keys or prefix == "buffer."
    for k in sorted(keys):
        assert got[k].dtype == torch.float64 or not want[k].is_floating_point(), k
        diff = float((got[k] - want[k]).abs().max()) if got[k].numel() else 0.0
        assert diff <= TOLERANCE, f"{k}: max |difference| {diff:.3g} > {TOLERANCE}"


@pytest.mark.parametrize("name", ["maml2_even", "maml2_uneven"])
def test_sharded_second_order_maml_meta_gradient_equals_one_process_within_1e_10(
    two_ranks: dict[str, list[dict[str, torch.Tensor]]], name: str
) -> None:
    single = meta_batch_step(name)
    assert any(v.abs().max() > 1e-3 for k, v in single.items() if k.startswith("grad."))
    for rank_result in two_ranks[name]:
        _assert_close(rank_result, single, "grad.")
        _assert_close(rank_result, single, "loss")


def test_the_two_ranks_end_a_step_with_bitwise_identical_gradients(
    two_ranks: dict[str, list[dict[str, torch.Tensor]]],
) -> None:
    for name in NAMES:
        a, b = two_ranks[name]
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}: {k} differs between the ranks"


def test_maml_plus_plus_running_statistics_merge_to_the_one_process_values(
    two_ranks: dict[str, list[dict[str, torch.Tensor]]],
) -> None:
    single = meta_batch_step("maml_pp")
    stats = [k for k in single if k.startswith("buffer.") and "running_" in k and single[k].ndim == 2]
    assert stats, "MAML++ should hold per-step running statistics"
    for rank_result in two_ranks["maml_pp"]:
        _assert_close(rank_result, single, "grad.")
        _assert_close(rank_result, single, "buffer.")


@pytest.mark.parametrize("name", ["protonet", "fomaml"])
def test_first_order_and_metric_methods_share_the_sharded_path(
    two_ranks: dict[str, list[dict[str, torch.Tensor]]], name: str
) -> None:
    single = meta_batch_step(name)
    for rank_result in two_ranks[name]:
        _assert_close(rank_result, single, "grad.")
        _assert_close(rank_result, single, "loss")


def test_one_rank_alone_does_not_hold_the_whole_batch_gradient() -> None:
    """The comparison can fail: a rank's own half, not all-reduced, is far from the whole batch's."""
    single = meta_batch_step("maml2_even")
    half = meta_batch_step("maml2_even", 0, 2, reduce=False)
    worst = max(float((half[k] - single[k]).abs().max()) for k in single if k.startswith("grad."))
    assert worst > 1e-4
