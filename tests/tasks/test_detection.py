"""Detection episodes: validation of boxes and labels, seeded K-shot draws."""

from __future__ import annotations

import pytest
import torch

from medmeta.errors import DataError
from medmeta.tasks.detection import BoxSupport, DetEpisode, KShotDetSampler


def _set(n: int, novel_every: int = 2) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """`n` 3x33x35 images, each with one box of class 0, and one of class 1 on every `novel_every`-th."""
    images = torch.zeros(n, 3, 33, 35, dtype=torch.uint8)
    boxes, labels = [], []
    for i in range(n):
        has = i % novel_every == 0
        boxes.append(torch.tensor([[1.0, 1.0, 5.0, 6.0]] + ([[10.0, 10.0, 20.0, 22.0]] if has else [])))
        labels.append(torch.tensor([0] + ([1] if has else [])))
    return images, boxes, labels


def test_draw_is_seeded_and_holds_k_distinct_images_of_the_novel_class() -> None:
    pool, query = _set(20), _set(4)
    sampler = KShotDetSampler(pool, query, ("base", "novel"), (1,), n_shot=3, seed=5, n_episodes=4)
    draws = [sampler.draw(i) for i in range(4)]
    assert draws == [sampler.draw(i) for i in range(4)]
    assert len({tuple(d) for d in draws}) > 1
    for d in draws:
        assert len(set(d)) == 3 and all(i % 2 == 0 for i in d)
    ep = sampler.episode(2)
    assert ep.support_images.shape == (3, 3, 33, 35) and ep.query_images.shape[0] == 4
    assert ep.base == (0,) and ep.support.n_shot == 3


def test_sampler_refuses_more_shots_than_images_holding_the_novel_class() -> None:
    with pytest.raises(
        DataError, match=r"fewer than K = 6 pool images hold novel class\(es\) \{'novel': 5\}"
    ):
        KShotDetSampler(_set(10), _set(2), ("base", "novel"), (1,), n_shot=6)


def test_support_without_a_novel_box_is_refused() -> None:
    images, boxes, labels = _set(2, novel_every=5)
    with pytest.raises(DataError, match=r"no box of novel class\(es\) \['novel'\]"):
        BoxSupport(images[1:], tuple(boxes[1:]), tuple(labels[1:]), ("base", "novel"), (1,))


@pytest.mark.parametrize(
    ("box", "label", "match"),
    [
        ([[5.0, 1.0, 5.0, 6.0]], [0], "xmax > xmin"),
        ([[1.0, 1.0, 5.0, 6.0]], [3], r"labels must lie in 0\.\.1"),
        ([[1.0, 1.0, 5.0]], [0], r"boxes must be \(n, 4\)"),
    ],
)
def test_bad_query_boxes_are_refused_with_the_reason(
    box: list[list[float]], label: list[int], match: str
) -> None:
    images, boxes, labels = _set(1)
    with pytest.raises(DataError, match=match):
        DetEpisode(
            images,
            tuple(boxes),
            tuple(labels),
            images,
            (torch.tensor(box),),
            (torch.tensor(label),),
            ("a", "b"),
            (1,),
        )


def test_float_labels_are_refused() -> None:
    images, boxes, _ = _set(1)
    with pytest.raises(DataError, match="labels must be int64"):
        BoxSupport(images, tuple(boxes), (torch.tensor([0.0, 1.0]),), ("a", "b"), (1,))


def test_draw_tops_each_base_class_up_to_k_images() -> None:
    # images 0..9 hold only the novel class 1; images 10..19 only the base class 0
    images = torch.zeros(20, 3, 33, 35, dtype=torch.uint8)
    boxes = [torch.tensor([[1.0, 1.0, 5.0, 6.0]]) for _ in range(20)]
    labels = [torch.tensor([1 if i < 10 else 0]) for i in range(20)]
    sampler = KShotDetSampler((images, boxes, labels), _set(2), ("base", "novel"), (1,), n_shot=3, seed=1)
    draw = sampler.draw(0)
    assert len(draw) == 6 and len(set(draw)) == 6
    assert all(i < 10 for i in draw[:3]) and all(i >= 10 for i in draw[3:])
