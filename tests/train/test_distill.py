"""The distillation loss against hand-computed values, the temperature fit, the views and the batches."""

from __future__ import annotations

import math

import pytest
import torch

from medmeta.methods.metric.protonet import ProtoNet
from medmeta.models.backbones import Conv4
from medmeta.pipeline import default_normalization
from medmeta.train.distill import (
    DistillBatches,
    distillation_loss,
    fit_temperature_to_teacher,
    kd_loss,
    make_views,
)

E = math.e


def test_kd_loss_matches_a_hand_computed_value() -> None:
    """Row 1: z_s = (2, 0), z_t = (0, 0), T = 2: p_t = (1/2, 1/2), p_s = (e, 1) / (1 + e), so
    KL = 1/2 ln((1+e)/(2e)) + 1/2 ln((1+e)/2) = ln((1+e)/2) - 1/2 and T^2 KL = 4 ln((1+e)/2) - 2 = 0.480458...
    Row 2: equal logits, KL = 0. The loss is the mean over rows."""
    student = torch.tensor([[2.0, 0.0], [0.3, -0.7]], dtype=torch.float64)
    teacher = torch.tensor([[0.0, 0.0], [0.3, -0.7]], dtype=torch.float64)
    expected = (4 * math.log((1 + E) / 2) - 2) / 2
    assert expected == pytest.approx(0.4804580278331103 / 2, abs=1e-15)
    got = kd_loss(student, teacher, temperature=2.0)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(expected, abs=1e-12)


def test_kd_loss_is_unchanged_by_a_constant_added_to_the_teacher_logits() -> None:
    """An ensemble passes log-probabilities, which differ from logits by a constant per row."""
    student = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    teacher = torch.tensor([[0.2, 1.1, -0.4]], dtype=torch.float64)
    as_log_probs = torch.log_softmax(teacher, -1)
    assert float(kd_loss(student, teacher, 3.0)) == pytest.approx(float(kd_loss(student, as_log_probs, 3.0)))
    assert float(kd_loss(teacher, teacher, 3.0)) == pytest.approx(0.0, abs=1e-15)


def test_distillation_loss_adds_the_weighted_support_cross_entropy() -> None:
    """Support logits (1, 0) with label 0: CE = ln(1 + e^-1) = 0.313261..."""
    student = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    teacher = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    support = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    got = distillation_loss(student, teacher, support, torch.tensor([0]), temperature=2.0, ce_weight=0.5)
    expected = (4 * math.log((1 + E) / 2) - 2) + 0.5 * math.log(1 + 1 / E)
    assert float(got) == pytest.approx(expected, abs=1e-12)


def test_kd_loss_refuses_a_non_positive_temperature_and_mismatched_shapes() -> None:
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        kd_loss(z, z, 0.0)
    with pytest.raises(ValueError, match=r"\(2, 3\) and teacher logits \(2, 4\)"):
        kd_loss(z, torch.zeros(2, 4), 1.0)


def test_fitted_temperature_undoes_a_known_sharpening_of_the_teacher() -> None:
    teacher = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert fit_temperature_to_teacher(3.0 * teacher, teacher) == pytest.approx(3.0, rel=1e-4)
    assert fit_temperature_to_teacher(torch.zeros(0, 4), torch.zeros(0, 4)) == 1.0


def test_views_start_with_the_images_and_repeat_with_the_seed() -> None:
    images = torch.randint(
        0, 256, (5, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    views = make_views(images, 3, seed=7)
    assert views.shape == (15, 1, 16, 16) and views.dtype == torch.uint8
    assert torch.equal(views[:5], images)
    assert not torch.equal(views[5:10], images)
    assert torch.equal(views, make_views(images, 3, seed=7))
    assert not torch.equal(views[5:], make_views(images, 3, seed=8)[5:])


def _batches(student_views: torch.Tensor, teacher: torch.Tensor) -> DistillBatches:
    g = torch.Generator().manual_seed(2)
    support = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=g)
    return DistillBatches(
        support=support,
        support_labels=torch.tensor([0, 0, 1, 1, 2, 2]),
        n_way=3,
        views=student_views,
        teacher_logits=teacher,
        prepare=default_normalization(3),
        steps_per_epoch=4,
        batch_size=5,
        seed=3,
        temperature=4.0,
        ce_weight=1.0,
    )


def test_batches_repeat_by_index_and_the_loss_reaches_every_backbone_weight() -> None:
    g = torch.Generator().manual_seed(4)
    views = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8, generator=g)
    source = _batches(views, torch.randn(12, 3, generator=g))
    a, b, c = (source.batch(i, torch.device("cpu")) for i in (1, 1, 2))
    assert torch.equal(a.views, b.views) and torch.equal(a.support, b.support)
    assert not torch.equal(a.views, c.views)
    assert a.views.shape == (5, 3, 16, 16) and a.teacher_logits.shape == (5, 3)
    torch.manual_seed(0)
    method = ProtoNet(Conv4(in_channels=3, hidden=8, image_size=16)).train()
    loss = source.loss(method, a)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.backbone.parameters())
