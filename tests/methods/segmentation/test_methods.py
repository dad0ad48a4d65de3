"""What the segmenters compute, beyond the contract every learner keeps (``tests/methods/test_contract.py``):
prototype maths, PANet's alignment loss, first-order MAML's gradient and the baselines, on real episodes
(CT organs and EM membranes, 32 px) or hand-made images."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from medmeta.data.segmentation.sources import SegSource
from medmeta.methods.segmentation import SEG_METHODS, FewShotSegmenter
from medmeta.methods.segmentation.base import seg_loss
from medmeta.methods.segmentation.baselines import OtsuThreshold, SupportMean, otsu_threshold
from medmeta.methods.segmentation.maml import SegMAML
from medmeta.methods.segmentation.prototype import PANet, local_prototypes, masked_average, prototype_scores
from medmeta.tasks.segmentation import MaskSupport, SegEpisode, SegEpisodeSampler
from tests._helpers.segmentation import SMALL


def make(name: str) -> FewShotSegmenter:
    torch.manual_seed(0)
    cls = SEG_METHODS[name]
    return cls.from_options(SMALL.get(name, {}))


@pytest.fixture(scope="module")
def episodes(seg_sources: dict[str, SegSource]) -> list[SegEpisode]:
    structures = {**seg_sources["ct"].structures, **seg_sources["em"].structures}
    usable = {k: v for k, v in structures.items() if len(v) >= 4}
    sampler = SegEpisodeSampler(usable, n_shot=2, n_query=2, seed=3)
    return [sampler.episode(i) for i in range(3)]


@pytest.mark.parametrize("name", [n for n, c in sorted(SEG_METHODS.items()) if c.training_source == "none"])
def test_baselines_have_nothing_to_train(name: str) -> None:
    assert not list(make(name).parameters())


def test_masked_average_and_local_prototypes_by_hand() -> None:
    feats = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1  # the top-left 2x2 window
    proto = masked_average(feats, mask)
    torch.testing.assert_close(proto, torch.tensor([[2.5, 18.5]]))  # means of (0,1,4,5) and (16,17,20,21)
    local = local_prototypes(feats, mask, window=2, threshold=0.95)
    torch.testing.assert_close(local, proto)  # exactly one fully-covered window
    assert local_prototypes(feats, mask, window=4, threshold=0.95).shape == (0, 2)


def test_prototype_score_is_the_scaled_cosine_for_one_prototype() -> None:
    q = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    p = torch.tensor([[1.0, 1.0]])
    assert prototype_scores(q, p, 20.0).item() == pytest.approx(20 / 2**0.5)


def test_panet_alignment_loss_adds_to_the_query_loss(episodes: list[SegEpisode]) -> None:
    ep = episodes[0]
    torch.manual_seed(0)
    with_align = PANet.from_options({**SMALL["panet"], "align_weight": 1.0}).eval()
    torch.manual_seed(0)
    without = PANet.from_options({**SMALL["panet"], "align_weight": 0.0}).eval()
    assert float(with_align.episode_loss(ep).detach()) > float(without.episode_loss(ep).detach())


def test_first_order_maml_gradient_matches_a_hand_updated_network(episodes: list[SegEpisode]) -> None:
    """One inner SGD step, first order: the meta-gradient is the query-loss gradient at the adapted weights."""
    ep = episodes[0]
    torch.manual_seed(0)
    model = SegMAML.from_options({**SMALL["maml"], "first_order": True, "inner_lr": 0.05}).train()
    model.episode_loss(ep).backward()
    got = {n: p.grad.clone() for n, p in model.net.named_parameters() if p.grad is not None}

    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.net.named_parameters()}
    buffers = {n: None for n, _ in model.net.named_buffers()}
    support_loss = seg_loss(
        functional_call(model.net, (params, buffers), (ep.support_images,)), ep.support_masks
    )
    grads = torch.autograd.grad(support_loss, list(params.values()))
    adapted = {
        n: (p - 0.05 * g).detach().requires_grad_(True)
        for (n, p), g in zip(params.items(), grads, strict=True)
    }
    assert ep.query_masks is not None
    query_loss = seg_loss(functional_call(model.net, (adapted, buffers), (ep.query_images,)), ep.query_masks)
    expected = dict(zip(adapted, torch.autograd.grad(query_loss, list(adapted.values())), strict=True))
    for n, g in got.items():
        torch.testing.assert_close(g, expected[n], rtol=1e-4, atol=1e-6)


def test_otsu_splits_a_bimodal_image_and_follows_the_support_polarity() -> None:
    img = torch.zeros(1, 1, 8, 8)
    img[..., :, 4:] = 0.9
    t = otsu_threshold(img)
    assert 0.0 < float(t) <= 0.9
    mask = (img[:, 0] > 0.5).float()
    bright = OtsuThreshold().adapt(MaskSupport(img, mask)).predict(img).argmax(1)
    dark = OtsuThreshold().adapt(MaskSupport(img, 1 - mask)).predict(img).argmax(1)
    assert torch.equal(bright.float(), mask) and torch.equal(dark.float(), 1 - mask)


def test_support_mean_predicts_where_half_the_shots_agree() -> None:
    masks = torch.zeros(2, 4, 4)
    masks[0, 0, :2] = 1
    masks[1, 0, 1:3] = 1  # column 1 in both, columns 0 and 2 in one of two
    pred = (
        SupportMean()
        .adapt(MaskSupport(torch.rand(2, 1, 4, 4), masks))
        .predict(torch.rand(3, 1, 4, 4))
        .argmax(1)
    )
    assert pred.shape == (3, 4, 4)
    assert pred[0, 0].tolist() == [1, 1, 1, 0] and int(pred[:, 1:].sum()) == 0
