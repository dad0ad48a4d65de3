"""Baseline++: cosine pretraining head, cosine classifier on the support, real data and reloading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medmeta.methods.transfer.baseline_pp import BaselinePP, BaselinePPOptions
from medmeta.models.backbones import Conv4
from medmeta.models.heads import CosineHead
from medmeta.pipeline import load_method
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


def test_pretraining_uses_a_cosine_head_by_default() -> None:
    method = BaselinePP(Conv4(3, hidden=8, image_size=16))
    method.set_head_sizes([5])
    assert isinstance(method.heads[0], CosineHead)


def test_zero_steps_give_scaled_cosines_to_normalised_class_means() -> None:
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -3.0]])
    support = Support(as_images(x), torch.tensor([0, 0, 1, 1]), 2)
    q = torch.tensor([[1.0, 2.0]])
    method = BaselinePP(Flat(2), BaselinePPOptions(steps=0, cosine_scale=4.0)).eval()
    logits = method.adapt(support).predict(as_images(q))
    c0, c1 = torch.tensor([1.0, 1.0]) / 2**0.5, -torch.tensor([1.0, 1.0]) / 2**0.5  # unit means of unit rows
    qn = F.normalize(q, dim=-1)[0]
    torch.testing.assert_close(logits, 4.0 * torch.stack([qn @ c0, qn @ c1])[None])


def test_support_training_from_random_directions_fits_the_support_within_the_scale() -> None:
    x = torch.randn(8, 6, generator=seeded(0)) + 3 * torch.eye(6)[[0, 0, 1, 1, 2, 2, 3, 3]]
    support = Support(as_images(x), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), 4)
    method = BaselinePP(Flat(6), BaselinePPOptions(init="random", steps=100, lr=0.05)).eval()
    with torch.no_grad():
        logits = method.adapt(support).predict(as_images(x))
    assert torch.equal(logits.argmax(-1), support.labels)
    assert logits.abs().max() <= method.options.cosine_scale + 1e-4


def test_batched_support_training_equals_training_each_episode() -> None:
    method = BaselinePP(Flat(6), BaselinePPOptions(steps=15)).eval()
    xs = torch.randn(3, 6, 6, generator=seeded(0))
    qs = torch.randn(3, 4, 6, generator=seeded(1))
    ys = torch.tensor([0, 0, 1, 1, 2, 2]).expand(3, -1)
    expected = torch.stack(
        [
            method.adapt(Support(as_images(x), y, 3)).predict(as_images(q))
            for x, y, q in zip(xs, ys, qs, strict=True)
        ]
    )
    torch.testing.assert_close(method.logits_from_features(xs, ys, 3, qs), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.data
def test_baseline_pp_pretrains_beats_chance_and_reloads_from_its_checkpoint(
    data_dir: Path, tmp_path: Path
) -> None:
    cfg = real_config(data_dir, "baseline_pp")
    method, results = train_and_test(cfg, out_dir=tmp_path)
    assert_above_chance(results[0], 3)
    loaded, _, meta = load_method(tmp_path / "best.json")
    assert isinstance(loaded, BaselinePP) and isinstance(loaded.heads[0], CosineHead)
    assert meta["pretrain"]["classes"][0] == "blood_pbc/basophil"
    ep = make_episode(3, 2, 3, shape=(3, 32, 32))
    method.eval()
    torch.testing.assert_close(loaded.episode_logits(ep), method.episode_logits(ep))
