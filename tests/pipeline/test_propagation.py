"""Per-patient label propagation: slice choice, chain order on a known field, label combination, real CT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from medmeta.errors import DataError
from medmeta.methods.registration import REG_METHODS
from medmeta.pipeline.propagation import (
    labelled_positions,
    nearest_labelled,
    propagate_by_registration,
    propagate_by_segmentation,
    slice_dice,
)
from medmeta.tasks.segmentation import MaskSupport


def test_labelled_positions_and_nearest() -> None:
    assert labelled_positions(30, 1) == [15]
    assert labelled_positions(30, 3) == [5, 15, 25]
    assert labelled_positions(20, 5) == [2, 6, 10, 14, 18]
    assert labelled_positions(4, 4) == [0, 1, 2, 3]
    assert nearest_labelled(7, [1, 4]) == [1, 1, 1, 4, 4, 4, 4]  # slice 2 is 1 from 1 and 2 from 4
    assert nearest_labelled(6, [1, 3]) == [1, 1, 1, 3, 3, 3]  # slice 2 ties: the lower one
    with pytest.raises(DataError, match="choose 1 to 5"):
        labelled_positions(5, 6)


class _ShiftRight:
    """Registers every pair by the same field: one pixel along the last axis (``moved(x) = moving(x + 1)``)."""

    def __init__(self) -> None:
        self.pairs: list[int] = []

    def register(self, pairs: Tensor) -> Tensor:
        self.pairs.append(int(pairs.shape[0]))
        ddf = torch.zeros(pairs.shape[0], 2, *pairs.shape[2:])
        ddf[:, 1] = 1.0
        return ddf


def test_chain_composes_one_step_per_slice_and_direct_one_step() -> None:
    images = torch.rand(6, 1, 8, 12)
    labels = torch.zeros(6, 8, 12, dtype=torch.int64)
    labels[1, 2:5, 6:9] = 3  # labelled slice 1: columns 6-8
    method = _ShiftRight()
    out = propagate_by_registration(images, labels, [1], method, "chain")  # type: ignore[arg-type]
    assert method.pairs == [5]  # one batch: (1->0), (1->2), (2->3), (3->4), (4->5)
    for t in range(6):
        d = abs(t - 1)  # d chained shifts move the label d columns left
        expected = torch.zeros(8, 12, dtype=torch.int64)
        expected[2:5, 6 - d : 9 - d] = 3
        assert torch.equal(out[t], expected), t
    direct = propagate_by_registration(images, labels, [1], _ShiftRight(), "direct")  # type: ignore[arg-type]
    for t in (0, 2, 5):  # one registration whatever the distance
        assert torch.equal(direct[t, 2:5], out[0, 2:5]), t
    assert torch.equal(direct[1], labels[1])


def test_copy_by_identity_takes_the_nearest_labelled_slice() -> None:
    images = torch.rand(5, 1, 6, 6)
    labels = torch.arange(5).view(5, 1, 1).expand(5, 6, 6).clone()  # slice i is all label i
    out = propagate_by_registration(images, labels, [0, 4], REG_METHODS["identity"].from_options({}))
    assert out[:, 0, 0].tolist() == [0, 0, 0, 4, 4]


class _Threshold:
    """A segmenter that learns an intensity: foreground probability 0.9 where a query pixel equals the
    support's foreground intensity, else 0.1."""

    def adapt(self, support: MaskSupport) -> _Threshold:
        self.value = float(support.images[support.masks.bool().unsqueeze(1)].mean())
        return self

    def predict(self, images: Tensor) -> Tensor:
        fg = torch.where((images[:, 0] - self.value).abs() < 1e-6, 0.9, 0.1)
        return torch.stack([(1 - fg).log(), fg.log()], dim=1)


def test_segmentation_combines_one_task_per_label() -> None:
    images = torch.zeros(4, 1, 6, 6)
    images[:, 0, :3] = 0.25  # label 1 is the top half's intensity, label 2 the bottom-left corner's
    images[:, 0, 3:, :3] = 0.75
    labels = torch.zeros(4, 6, 6, dtype=torch.int64)
    labels[0, :3] = 1
    labels[0, 3:, :3] = 2
    labels[2] = 9  # not a labelled slice: never read
    out = propagate_by_segmentation(images, labels, [0], _Threshold())  # type: ignore[arg-type]
    for t in range(4):
        assert torch.equal(out[t], labels[0]), t


def test_slice_dice_scores_only_unlabelled_slices() -> None:
    ref = torch.ones(3, 4, 4, dtype=torch.int64)
    pred = ref.clone()
    pred[2] = 0
    assert slice_dice(pred, ref, [0], min_pixels=1).tolist() == [1.0, 0.0]


@pytest.mark.data
def test_registration_chain_beats_copy_on_the_real_ct(data_dir: Path) -> None:
    from medmeta.data.registration import load_volume_pool

    pool = load_volume_pool(data_dir, "ct", 64)
    assert pool.labels is not None
    marks = labelled_positions(len(pool), 3)
    copy = propagate_by_registration(
        pool.images, pool.labels, marks, REG_METHODS["identity"].from_options({})
    )
    method = REG_METHODS["instance_opt"].from_options({"steps": 40})
    chain = propagate_by_registration(pool.images, pool.labels, marks, method, "chain")
    for t in marks:
        assert torch.equal(chain[t], pool.labels[t])
    dice_copy = slice_dice(copy, pool.labels, marks)
    dice_chain = slice_dice(chain, pool.labels, marks)
    assert dice_chain.numel() == 27
    assert float(dice_chain.mean()) > float(dice_copy.mean()) + 0.03
