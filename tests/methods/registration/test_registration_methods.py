"""Registration methods: one contract over `REG_METHODS`, first-order meta-gradients against a hand-updated
copy, and recovery of known fields on real CT slices."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from medmeta.data.deformations import random_smooth_field, warp
from medmeta.errors import DataError
from medmeta.eval.registration import endpoint_error
from medmeta.methods.registration import REG_METHODS, RegistrationMethod
from medmeta.methods.registration.meta_init import MetaInitRegistration
from medmeta.methods.registration.voxelmorph import VoxelMorph
from medmeta.tasks.registration import PairEpisode, PairSupport

SMALL_NET = {"channels": (4, 8), "final_channels": (4,)}
OPTIONS: dict[str, dict[str, Any]] = {
    "identity": {},
    "instance_opt": {"steps": 3},
    "classical": {"iterations": 5},
    "voxelmorph": {**SMALL_NET, "eval_steps": 1},
    "meta_init": {**SMALL_NET, "inner_steps": 1, "eval_steps": 1},
    "field_init": {**SMALL_NET, "refine_steps": 1, "eval_steps": 2},
}
SHAPES = {2: (33, 34), 3: (9, 10, 11)}


def build(name: str, dims: int = 2, **extra: Any) -> RegistrationMethod:
    torch.manual_seed(0)
    return REG_METHODS[name].from_options({**OPTIONS[name], "spatial_dims": dims, **extra})


def smooth_pairs(dims: int, n: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Blurred random images and a smooth field: pairs ``(n, 2, *spatial)`` and the true field."""
    shape = SHAPES[dims]
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 1, *[max(3, s // 4) for s in shape]), generator=g)
    mode = "bilinear" if dims == 2 else "trilinear"
    moving = torch.nn.functional.interpolate(coarse, size=shape, mode=mode, align_corners=True)
    flow = random_smooth_field(shape, magnitude=1.0, generator=g, n=n)
    return torch.cat([moving, warp(moving, flow)], 1), flow


def test_registry_holds_every_method_with_its_options() -> None:
    assert set(REG_METHODS) == set(OPTIONS)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_register_gives_a_finite_field_for_each_pair_in_2d_and_3d(name: str, dims: int) -> None:
    method = build(name, dims).eval()
    pairs, _ = smooth_pairs(dims, n=2)
    ddf = method.register(pairs)
    assert ddf.shape == (2, dims, *SHAPES[dims])
    assert bool(torch.isfinite(ddf).all())


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_adapt_leaves_the_method_unchanged(name: str) -> None:
    method = build(name).eval()
    before = copy.deepcopy(method.state_dict())
    pairs, _ = smooth_pairs(2)
    method.adapt(PairSupport(pairs)).predict(pairs)
    after = method.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("meta", ["fomaml", "reptile"])
def test_every_network_parameter_gets_a_gradient_from_episode_loss(meta: str) -> None:
    for method in (build("voxelmorph"), build("meta_init", meta=meta), build("field_init")):
        pairs, _ = smooth_pairs(2, n=2)
        method.train().episode_loss(PairEpisode(pairs[:1], None, pairs[1:], None)).backward()
        missing = [
            n for n, p in method.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)
        ]
        assert not missing, f"{type(method).__name__} ({meta}): no gradient for {missing}"


def hand_adapted(method: VoxelMorph, support: torch.Tensor, steps: int) -> VoxelMorph:
    """A copy of `method` whose network took `steps` torch.optim.Adam steps on the support loss."""
    clone = copy.deepcopy(method)
    o = method.options
    opt = torch.optim.Adam(clone.net.parameters(), lr=o.inner_lr, betas=o.adam_betas, eps=1e-8)
    for _ in range(steps):
        opt.zero_grad()
        _, ddf = clone.net(support[:, :1], support[:, 1:])
        clone.loss(support, ddf).backward()
        opt.step()
    return clone


def test_fomaml_gradient_is_the_query_gradient_at_hand_adapted_weights() -> None:
    torch.manual_seed(0)
    method = MetaInitRegistration.from_options(
        {**SMALL_NET, "inner_steps": 2, "inner_lr": 1e-2, "meta": "fomaml"}
    )
    assert isinstance(method, MetaInitRegistration)
    method = method.double().train()
    pairs, _ = smooth_pairs(2, n=2)
    pairs = pairs[..., :32, :32].double()  # sizes the U-Net needs no padding for
    support, query = pairs[:1], pairs[1:]
    loss = method.episode_loss(PairEpisode(support, None, query, None))
    loss.backward()
    clone = hand_adapted(method, support, 2)
    _, ddf = clone.net(query[:, :1], query[:, 1:])
    ref_loss = clone.loss(query, ddf)
    ref = torch.autograd.grad(ref_loss, list(clone.net.parameters()))
    torch.testing.assert_close(loss.detach(), ref_loss.detach())
    for (name, p), g in zip(method.net.named_parameters(), ref, strict=True):
        torch.testing.assert_close(p.grad, g, msg=name)


def test_field_init_gradient_is_the_refined_field_gradient_pulled_back_through_the_network() -> None:
    from medmeta.methods.registration.field_init import FieldInitRegistration
    from medmeta.methods.registration.instance_opt import upsample_field

    torch.manual_seed(0)
    method = FieldInitRegistration.from_options(
        {**SMALL_NET, "refine_steps": 3, "refine_lr": 0.5, "start_weight": 0.0}
    )
    assert isinstance(method, FieldInitRegistration)
    method = method.double().train()
    pairs, _ = smooth_pairs(2, n=2)
    pairs = pairs[..., :32, :32].double()
    loss = method.episode_loss(PairEpisode(pairs[:1], None, pairs, None))
    loss.backward()
    # by hand: the network's field, three torch.optim.Adam steps on a 16 x 16 correction, the loss there
    _, start = method.net(pairs[:, :1], pairs[:, 1:])
    coarse = torch.zeros(2, 2, 16, 16, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([coarse], lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        method.loss(pairs, start.detach() + upsample_field(coarse, (32, 32))).backward()
        opt.step()
    refined = (start.detach() + upsample_field(coarse.detach(), (32, 32))).requires_grad_(True)
    ref_loss = method.loss(pairs, refined)
    (g,) = torch.autograd.grad(ref_loss, [refined])
    ref = torch.autograd.grad(start, list(method.net.parameters()), grad_outputs=g)
    torch.testing.assert_close(loss.detach(), ref_loss.detach())
    for (name, p), r in zip(method.net.named_parameters(), ref, strict=True):
        torch.testing.assert_close(p.grad, r, msg=name)
    method.eval()
    with torch.no_grad():
        torch.testing.assert_close(method.adapt(PairSupport(pairs), steps=3).predict(pairs), refined.detach())
        torch.testing.assert_close(method.adapt(PairSupport(pairs), steps=0).predict(pairs), start.detach())


def test_field_init_start_weight_adds_the_gradient_of_the_loss_at_the_networks_own_field() -> None:
    from medmeta.methods.registration.field_init import FieldInitRegistration

    pairs, _ = smooth_pairs(2, n=2)
    pairs = pairs[..., :32, :32].double()
    episode = PairEpisode(pairs[:1], None, pairs, None)
    grads = {}
    for w in (0.0, 0.5):
        torch.manual_seed(0)
        method = FieldInitRegistration.from_options({**SMALL_NET, "refine_steps": 2, "start_weight": w})
        method = method.double().train()
        method.episode_loss(episode).backward()
        grads[w] = [p.grad.clone() for p in method.net.parameters()]
    _, start = method.net(pairs[:, :1], pairs[:, 1:])
    extra = torch.autograd.grad(method.loss(pairs, start), list(method.net.parameters()))
    for g0, g1, e in zip(grads[0.0], grads[0.5], extra, strict=True):
        torch.testing.assert_close(g1, g0 + 0.5 * e)


def test_reptile_gradient_is_the_initialisation_minus_hand_adapted_weights() -> None:
    torch.manual_seed(0)
    method = MetaInitRegistration.from_options(
        {**SMALL_NET, "inner_steps": 2, "inner_lr": 1e-2, "meta": "reptile"}
    )
    assert isinstance(method, MetaInitRegistration)
    method = method.double().train()
    pairs, _ = smooth_pairs(2, n=1)
    pairs = pairs[..., :32, :32].double()
    method.episode_loss(PairEpisode(pairs, None, pairs, None)).backward()
    clone = hand_adapted(method, pairs, 2)
    for (name, p), q in zip(method.net.named_parameters(), clone.net.parameters(), strict=True):
        torch.testing.assert_close(p.grad, p.detach() - q.detach(), msg=name)


def test_instance_methods_refuse_to_predict_pairs_they_were_not_adapted_on() -> None:
    a, _ = smooth_pairs(2, seed=0)
    b, _ = smooth_pairs(2, seed=1)
    for name in ("instance_opt", "classical"):
        predictor = build(name).adapt(PairSupport(a))
        with pytest.raises(DataError, match="registers the pairs it was adapted on"):
            predictor.predict(b)


def test_pairs_of_the_wrong_dimension_are_refused_with_the_option_to_set() -> None:
    pairs, _ = smooth_pairs(3)
    with pytest.raises(DataError, match="spatial_dims=3"):
        build("instance_opt", 2).register(pairs)


# ------------------------------------------------------------------------------------------ real data
@pytest.fixture(scope="module")
def ct_pairs(seg_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Four CT slices at 64 px, each deformed by a known smooth field (magnitude 2 px)."""
    from medmeta.data.registration import load_volume_pool

    pool = load_volume_pool(seg_root, "ct", 64)
    moving = pool.images[torch.tensor([8, 14, 20, 26])]
    flow = random_smooth_field((64, 64), magnitude=2.0, generator=torch.Generator().manual_seed(7), n=4)
    return torch.cat([moving, warp(moving, flow)], 1), flow


@pytest.mark.parametrize(
    ("name", "options"),
    [("instance_opt", {"steps": 60}), ("classical", {"transform": "demons", "iterations": 50})],
)
def test_iterative_methods_recover_a_known_field_on_real_ct(
    ct_pairs: tuple[torch.Tensor, torch.Tensor], name: str, options: dict[str, Any]
) -> None:
    pairs, flow = ct_pairs
    before = endpoint_error(torch.zeros_like(flow), flow).mean()
    after = endpoint_error(REG_METHODS[name].from_options(options).register(pairs), flow).mean()
    assert after < 0.6 * before, (
        f"{name}: EPE {float(after):.2f} px against {float(before):.2f} px unregistered"
    )


def test_test_time_steps_lower_the_loss_of_a_real_pair(ct_pairs: tuple[torch.Tensor, torch.Tensor]) -> None:
    method = build("meta_init", inner_lr=1e-2).eval()
    pairs = ct_pairs[0][:1]
    with torch.no_grad():
        losses = [
            float(method.loss(pairs, method.adapt(PairSupport(pairs), steps=k).predict(pairs)))
            for k in (0, 5)
        ]
    assert losses[1] < losses[0]
