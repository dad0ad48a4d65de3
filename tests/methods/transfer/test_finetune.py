"""Fine-tuning: prototype initialisation by hand, head and full modes, purity, determinism, real data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medmeta.methods.functional import compute_prototypes, prototype_logits
from medmeta.methods.transfer.finetune import Finetune, FinetuneOptions, init_linear_head
from medmeta.models.backbones import Conv4
from medmeta.tasks.episode import Support
from tests._helpers.episodes import make_episode
from tests._helpers.transfer import (
    Flat,
    as_images,
    assert_above_chance,
    real_config,
    seeded,
    single_thread,  # noqa: F401  (autouse fixture)
    train_and_test,
)


def small(**options: object) -> Finetune:
    torch.manual_seed(0)
    return Finetune(Conv4(3, hidden=8, image_size=16), FinetuneOptions(**options))  # type: ignore[arg-type]


def _state(method: Finetune) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def test_zero_steps_from_prototypes_is_the_nearest_prototype_classifier() -> None:
    x, y = torch.randn(6, 5, generator=seeded(0)), torch.tensor([0, 0, 1, 1, 2, 2])
    q = torch.randn(4, 5, generator=seeded(1))
    method = Finetune(Flat(5), FinetuneOptions(steps=0, transform="none")).eval()  # type: ignore[arg-type]
    logits = method.adapt(Support(as_images(x), y, 3)).predict(as_images(q))
    proto = prototype_logits(q, compute_prototypes(x, y, 3), "sqeuclidean", 1.0)  # -||q - c||^2
    torch.testing.assert_close(logits - q.pow(2).sum(-1, keepdim=True), proto)  # 2 q.c - ||c||^2


def test_head_initialisations_have_the_right_shapes_and_random_is_seeded() -> None:
    f, y = torch.randn(2, 6, 4), torch.tensor([[0, 0, 1, 1, 2, 2]] * 2)
    w, b = init_linear_head(f, y, 3, "zeros", seeded())
    assert w.shape == (2, 3, 4) and b.shape == (2, 3) and w.abs().sum() == 0
    w1, _ = init_linear_head(f, y, 3, "random", seeded(5))
    w2, _ = init_linear_head(f, y, 3, "random", seeded(5))
    assert torch.equal(w1, w2) and w1.abs().max() <= 0.5


@pytest.mark.parametrize("mode", ["head", "full"])
def test_training_under_no_grad_changes_the_head_and_fits_the_support(mode: str) -> None:
    ep = make_episode(3, 3, 2, seed=0)
    before = small(mode=mode, steps=0).eval().adapt(ep.support).predict(ep.support_images)
    with torch.no_grad():  # as in evaluation
        after = small(mode=mode, steps=30, lr=0.05).eval().adapt(ep.support).predict(ep.support_images)
    assert not torch.allclose(before, after)
    assert torch.equal(after.argmax(-1), ep.support_labels)


@pytest.mark.parametrize("train_mode", [False, True])
def test_full_fine_tuning_never_changes_the_method(train_mode: bool) -> None:
    method = small(mode="full", steps=3, backbone_lr=0.1)
    method.train(train_mode)
    ep = make_episode(3, 2, 2)
    before = _state(method)
    predictor = method.adapt(ep.support)
    predictor.predict(ep.query_images)
    after = _state(method)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    allowed = {k for k in before if "running" in k or "num_batches" in k} if train_mode else set()
    assert set(changed) <= allowed  # only batch-norm statistics of the support pass, in training mode
    assert predictor.state is not None
    moved = [k for k, v in method.backbone.named_parameters() if not torch.equal(predictor.state[k], v)]
    assert moved  # the copies were fine-tuned


def test_full_fine_tuning_is_deterministic() -> None:
    method = small(mode="full", steps=5, head_init="random", seed=3).eval()
    ep = make_episode(3, 2, 2)
    a = method.adapt(ep.support).predict(ep.query_images)
    b = method.adapt(ep.support).predict(ep.query_images)
    assert torch.equal(a, b)


def test_batched_head_training_equals_training_each_episode() -> None:
    method = small(steps=20, transform="cl2n").eval()
    method.feature_mean.normal_(generator=seeded(2))
    episodes = [make_episode(3, 2, 3, seed=s) for s in range(3)]
    with torch.no_grad():
        expected = torch.stack([method.episode_logits(ep) for ep in episodes])
        s = torch.stack([method.backbone(ep.support_images) for ep in episodes])
        q = torch.stack([method.backbone(ep.query_images) for ep in episodes])
        got = method.logits_from_features(s, torch.stack([ep.support_labels for ep in episodes]), 3, q)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_full_mode_refuses_cached_features() -> None:
    assert small(mode="head").frozen_backbone and not small(mode="full").frozen_backbone  # follows the option
    with pytest.raises(NotImplementedError, match="use_cache=False"):
        small(mode="full").logits_from_features(
            torch.zeros(1, 2, 8), torch.tensor([[0, 1]]), 2, torch.zeros(1, 2, 8)
        )


@pytest.mark.data
def test_finetune_pretrains_and_beats_chance_on_unseen_blood_cell_classes(data_dir: Path) -> None:
    method, results = train_and_test(real_config(data_dir, "finetune"))
    assert_above_chance(results[0], 3)
    assert isinstance(method, Finetune)
