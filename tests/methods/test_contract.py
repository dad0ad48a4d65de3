"""The contract every registered method keeps (one suite over `METHODS`, and over option variants)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import torch

from medmeta.errors import ConfigError
from medmeta.methods import METHODS, build_method
from medmeta.methods.base import FewShotMethod, MethodOptions
from medmeta.models.backbones import Conv4
from medmeta.tasks.episode import Episode
from tests._helpers.episodes import make_episode

NAMES = sorted(METHODS)

#: Option sets that change a method's computation graph, checked with the defaults.
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "protonet": [{"distance": "euclidean"}, {"distance": "cosine", "scale": 10.0, "learn_scale": True}],
    "matching": [{"fce": True, "fce_steps": 2}, {"learn_scale": True}],
    "relation": [{"loss": "ce", "aggregate": "sum"}],
    "siamese": [{"rule": "mean", "normalize": False}],
}
CASES = [
    pytest.param(name, options, id=name + "".join(f"-{k}={v}" for k, v in options.items()))
    for name in NAMES
    for options in [{}, *VARIANTS.get(name, [])]
]
EPISODIC = [c for c in CASES if METHODS[c.values[0]].trainer == "episodic"]  # type: ignore[index]
INVARIANT = [c for c in CASES if METHODS[c.values[0]].permutation_invariant]  # type: ignore[index]
FROZEN = [c for c in CASES if METHODS[c.values[0]].frozen_backbone]  # type: ignore[index]


def small_method(
    name: str, spatial_dims: int = 2, channels: int = 3, options: dict[str, Any] | None = None
) -> FewShotMethod:
    torch.manual_seed(0)
    backbone = Conv4(in_channels=channels, spatial_dims=spatial_dims, hidden=8, image_size=16)
    return build_method(name, backbone, options)


def _state(method: FewShotMethod) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"state '{k}' changed")


@pytest.mark.parametrize(("name", "options"), CASES)
def test_logits_have_shape_query_by_way_and_no_nan(name: str, options: dict[str, Any]) -> None:
    method = small_method(name, options=options).eval()
    ep = make_episode(n_way=3, n_shot=2, n_query=4)
    logits = method.episode_logits(ep)
    assert logits.shape == (12, 3)
    assert torch.isfinite(logits).all()
    predictor = method.adapt(ep.support)
    assert predictor.predict(ep.query_images).shape == (12, 3)


@pytest.mark.parametrize(("name", "options"), EPISODIC)
def test_every_trainable_parameter_gets_a_gradient_from_episode_loss(
    name: str, options: dict[str, Any]
) -> None:
    method = small_method(name, options=options).train()
    loss = method.episode_loss(make_episode())
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize(("name", "options"), CASES)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_adapt_does_not_mutate_method(name: str, options: dict[str, Any], mode: str) -> None:
    method = small_method(name, options=options)
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


@pytest.mark.parametrize(("name", "options"), INVARIANT)
def test_permuting_the_class_order_permutes_the_logits(name: str, options: dict[str, Any]) -> None:
    method = small_method(name, options=options).eval()
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


@pytest.mark.parametrize(("name", "options"), CASES)
def test_method_works_on_3d_volumes(name: str, options: dict[str, Any]) -> None:
    method = small_method(name, spatial_dims=3, channels=1, options=options).eval()
    ep = make_episode(n_way=2, n_shot=2, n_query=2, shape=(1, 16, 16, 16))
    logits = method.episode_logits(ep)
    assert logits.shape == (4, 2)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_deepcopy_gives_an_independent_method(name: str) -> None:
    method = small_method(name)
    clone = copy.deepcopy(method)
    for p in clone.parameters():
        p.data.add_(1.0)
    for (n, p), (_, q) in zip(method.named_parameters(), clone.named_parameters(), strict=True):
        assert not torch.equal(p, q), n


@pytest.mark.parametrize(("name", "options"), FROZEN)
def test_a_frozen_backbone_method_scores_features_as_it_scores_images(
    name: str, options: dict[str, Any]
) -> None:
    """What cached evaluation relies on: `logits_from_features` on backbone outputs = `episode_logits`."""
    method = small_method(name, options=options).eval()
    ep = make_episode(n_way=3, n_shot=2, n_query=3)
    with torch.no_grad():
        torch.manual_seed(1)
        expected = method.episode_logits(ep)
        support = method.backbone(ep.support_images)[None]  # (1, n_support, d)
        query = method.backbone(ep.query_images)[None]  # (1, n_query, d)
        torch.manual_seed(1)
        got = method.logits_from_features(support, ep.support_labels[None], ep.n_way, query)
    assert got.shape == (1, 9, 3)
    torch.testing.assert_close(got[0], expected, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize(("name", "options"), FROZEN)
def test_a_stack_of_episodes_is_scored_like_each_episode_alone(name: str, options: dict[str, Any]) -> None:
    method = small_method(name, options=options).eval()
    episodes = [make_episode(n_way=3, n_shot=2, n_query=2, seed=s) for s in (0, 1)]
    with torch.no_grad():
        support = torch.stack([method.backbone(e.support_images) for e in episodes])  # (2, n_support, d)
        query = torch.stack([method.backbone(e.query_images) for e in episodes])  # (2, n_query, d)
        labels = torch.stack([e.support_labels for e in episodes])  # (2, n_support)
        torch.manual_seed(1)
        stacked = method.logits_from_features(support, labels, 3, query)
        for t in range(2):
            torch.manual_seed(1)
            alone = method.logits_from_features(support[t : t + 1], labels[t : t + 1], 3, query[t : t + 1])
            torch.testing.assert_close(stacked[t], alone[0], rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("name", NAMES)
def test_method_class_docstring_opens_with_its_paper_and_year(name: str) -> None:
    doc = (METHODS[name].__doc__ or "").strip()
    first_paragraph = doc.split("\n\n")[0]
    assert re.search(r"(19|20)\d\d", first_paragraph), (
        f"{name}: docstring should open with the paper citation"
    )


@pytest.mark.parametrize("name", NAMES)
def test_options_are_frozen_and_unknown_options_are_refused_by_name(name: str) -> None:
    assert issubclass(METHODS[name].Options, MethodOptions)
    assert METHODS[name].Options.model_config.get("frozen") is True
    backbone = Conv4(in_channels=1, hidden=4, image_size=16)
    with pytest.raises(ConfigError, match="no_such_option"):
        build_method(name, backbone, {"no_such_option": 1})


def test_only_the_inner_loop_methods_ask_deployment_to_predict_one_image_at_a_time() -> None:
    """Their predictors normalise batch norm with the query batch's statistics (`per_image_prediction`)."""
    from medmeta.methods.inner_loop import InnerLoopMethod

    per_image = {n for n, c in METHODS.items() if c.per_image_prediction}
    assert per_image == {n for n, c in METHODS.items() if issubclass(c, InnerLoopMethod)}
    assert {"maml", "fomaml", "maml_pp", "meta_sgd", "anil", "reptile"} == per_image
