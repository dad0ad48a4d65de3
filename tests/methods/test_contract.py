"""The contract every registered method keeps (one suite over `METHODS`)."""

from __future__ import annotations

import copy

import pytest
import torch

from medmeta.episodes.episode import Episode
from medmeta.methods import METHODS, build_method
from medmeta.methods.base import FewShotMethod
from medmeta.models.backbones import Conv4
from tests.conftest import make_episode

NAMES = sorted(METHODS)


def small_method(name: str, spatial_dims: int = 2, channels: int = 3) -> FewShotMethod:
    torch.manual_seed(0)
    backbone = Conv4(in_channels=channels, spatial_dims=spatial_dims, hidden=8, image_size=16)
    return build_method(name, backbone)


def _state(method: FewShotMethod) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"state '{k}' changed")


@pytest.mark.parametrize("name", NAMES)
def test_logits_have_shape_query_by_way_and_no_nan(name: str) -> None:
    method = small_method(name).eval()
    ep = make_episode(n_way=3, n_shot=2, n_query=4)
    logits = method.episode_logits(ep)
    assert logits.shape == (12, 3)
    assert torch.isfinite(logits).all()
    predictor = method.adapt(ep.support)
    assert predictor.predict(ep.query_images).shape == (12, 3)


@pytest.mark.parametrize("name", [n for n in NAMES if METHODS[n].trainer == "episodic"])
def test_every_trainable_parameter_gets_a_gradient_from_episode_loss(name: str) -> None:
    method = small_method(name).train()
    loss = method.episode_loss(make_episode())
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_adapt_does_not_mutate_method(name: str, mode: str) -> None:
    method = small_method(name)
    method.train(mode == "train")
    ep = make_episode()
    before = _state(method)
    predictor = method.adapt(ep.support)
    predictor.predict(ep.query_images)
    after = _state(method)
    if mode == "eval":
        _assert_same_state(before, after)
    else:  # training mode may update batch-norm running statistics, never parameters
        params = {n for n, _ in method.named_parameters()}
        _assert_same_state({k: before[k] for k in params}, {k: after[k] for k in params})


@pytest.mark.parametrize("name", [n for n in NAMES if METHODS[n].permutation_invariant])
def test_permuting_the_class_order_permutes_the_logits(name: str) -> None:
    method = small_method(name).eval()
    ep = make_episode(n_way=4, n_shot=2, n_query=2)
    perm = torch.tensor([2, 0, 3, 1])  # old class c -> new label perm[c]
    permuted = Episode(
        ep.support_images,
        perm[ep.support_labels],
        ep.query_images,
        perm[ep.query_labels],
        ep.class_ids[torch.argsort(perm)],
    )
    torch.manual_seed(1)
    logits = method.episode_logits(ep)
    torch.manual_seed(1)
    logits_p = method.episode_logits(permuted)
    torch.testing.assert_close(logits_p[:, perm], logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_method_works_on_3d_volumes(name: str) -> None:
    method = small_method(name, spatial_dims=3, channels=1).eval()
    ep = make_episode(n_way=2, n_shot=2, n_query=2, shape=(1, 16, 16, 16))
    assert method.episode_logits(ep).shape == (4, 2)


@pytest.mark.parametrize("name", NAMES)
def test_deepcopy_gives_an_independent_method(name: str) -> None:
    method = small_method(name)
    clone = copy.deepcopy(method)
    for p in clone.parameters():
        p.data.add_(1.0)
    for (n, p), (_, q) in zip(method.named_parameters(), clone.named_parameters(), strict=True):
        assert not torch.equal(p, q), n
