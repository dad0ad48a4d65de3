"""The contract every few-shot learner keeps, whatever its task: one suite over every registered
classification method (`METHODS`, with option variants) and every segmenter (`SEG_METHODS`), through the
generic `medmeta.methods.learner.FewShotLearner` interface; then what only classification promises
(class-permutation equivariance, 3-D volumes, cached features, per-image deployment).

Classification runs on synthetic episodes (every method, every variant, in seconds); segmentation on real
episodes (CT organs and EM membranes at 32 px), skipped with the reason when the data is absent.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import pytest
import torch

from medmeta.config import ModelConfig
from medmeta.data.transforms import Normalization
from medmeta.errors import ConfigError
from medmeta.methods import METHODS, build_method
from medmeta.methods.base import FewShotMethod
from medmeta.methods.learner import FewShotLearner, LearnerOptions, Predictor
from medmeta.methods.segmentation import BASELINES, SEG_METHODS
from medmeta.models.backbones import Conv4
from medmeta.models.factory import make_backbone
from medmeta.tasks.base import TaskEpisode
from medmeta.tasks.episode import Episode
from medmeta.tasks.segmentation import SegEpisode, SegEpisodeSampler
from tests._helpers.episodes import make_episode
from tests._helpers.pretrained import write_timm_folder
from tests._helpers.segmentation import SMALL

NAMES = sorted(METHODS)

#: Option sets that change a method's computation graph, checked with the defaults.
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "protonet": [{"distance": "euclidean"}, {"distance": "cosine", "scale": 10.0, "learn_scale": True}],
    "matching": [{"fce": True, "fce_steps": 2}, {"learn_scale": True}],
    "relation": [{"loss": "ce", "aggregate": "sum"}],
    "siamese": [{"rule": "mean", "normalize": False}],
}


def small_method(
    name: str, spatial_dims: int = 2, channels: int = 3, options: dict[str, Any] | None = None
) -> FewShotMethod:
    torch.manual_seed(0)
    backbone = Conv4(in_channels=channels, spatial_dims=spatial_dims, hidden=8, image_size=16)
    return build_method(name, backbone, options)


def small_segmenter(name: str, options: dict[str, Any] | None = None) -> FewShotLearner[Any, Any]:
    torch.manual_seed(0)
    return SEG_METHODS[name].from_options({**SMALL.get(name, {}), **(options or {})})


@pytest.fixture(scope="module")
def seg_episodes(seg_sources: dict[str, Any]) -> list[SegEpisode]:
    """Three real 1-way 2-shot episodes of CT organs and EM membranes (32 px)."""
    structures = {**seg_sources["ct"].structures, **seg_sources["em"].structures}
    usable = {k: v for k, v in structures.items() if len(v) >= 4}
    sampler = SegEpisodeSampler(usable, n_shot=2, n_query=2, seed=3)
    return [sampler.episode(i) for i in range(3)]


@dataclass(frozen=True)
class Family:
    """One task family as the generic suite sees it."""

    registry: dict[str, type[FewShotLearner[Any, Any]]]
    build: Callable[[str, dict[str, Any] | None], FewShotLearner[Any, Any]]
    episodes: Callable[[pytest.FixtureRequest], list[TaskEpisode]]
    output_shape: Callable[[Any], tuple[int, ...]]
    trainable: Callable[[type[Any]], bool]
    #: learners exempt from citing a paper (trivial baselines)
    baselines: tuple[str, ...] = ()


FAMILIES: dict[str, Family] = {
    "classification": Family(
        registry=METHODS,  # type: ignore[arg-type]
        build=lambda name, options: small_method(name, options=options),
        episodes=lambda request: [make_episode(n_way=3, n_shot=2, n_query=4, seed=s) for s in range(3)],
        output_shape=lambda ep: (ep.query_images.shape[0], ep.n_way),
        trainable=lambda cls: cls.trainer == "episodic",
    ),
    "segmentation": Family(
        registry=SEG_METHODS,  # type: ignore[arg-type]
        build=small_segmenter,
        episodes=lambda request: request.getfixturevalue("seg_episodes"),
        output_shape=lambda ep: (ep.query_images.shape[0], 2, *ep.query_images.shape[2:]),
        trainable=lambda cls: cls.training_source != "none",
        baselines=BASELINES,
    ),
}
CASES = [
    pytest.param(
        family, name, options, id=f"{family}-{name}" + "".join(f"-{k}={v}" for k, v in options.items())
    )
    for family, fam in FAMILIES.items()
    for name in sorted(fam.registry)
    for options in [{}, *(VARIANTS.get(name, []) if family == "classification" else [])]
]
LEARNERS = [pytest.param(f, n, id=f"{f}-{n}") for f, fam in FAMILIES.items() for n in sorted(fam.registry)]
CITED = [p for p in LEARNERS if p.values[1] not in FAMILIES[p.values[0]].baselines]  # type: ignore[index]
TRAINABLE = [
    c
    for c in CASES
    if FAMILIES[c.values[0]].trainable(FAMILIES[c.values[0]].registry[c.values[1]])  # type: ignore[index]
]


def _state(learner: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.state_dict().items()}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"state '{k}' changed")


def _predict(learner: FewShotLearner[Any, Any], ep: Any) -> torch.Tensor:
    predictor = learner.adapt(ep.support)
    assert isinstance(predictor, Predictor)
    return predictor.predict(ep.query_images)


@pytest.mark.parametrize(("family", "name", "options"), CASES)
def test_predictions_have_the_task_shape_and_no_nan(
    family: str, name: str, options: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    fam = FAMILIES[family]
    learner = fam.build(name, options).eval()
    ep = fam.episodes(request)[0]
    with torch.no_grad():
        out = _predict(learner, ep)
    assert out.shape == fam.output_shape(ep)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("family", "name", "options"), CASES)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_adapt_does_not_mutate_the_learner(
    family: str, name: str, options: dict[str, Any], mode: str, request: pytest.FixtureRequest
) -> None:
    fam = FAMILIES[family]
    learner = fam.build(name, options).train(mode == "train")
    ep = fam.episodes(request)[1]
    before = _state(learner)
    torch.manual_seed(1)
    first = _predict(learner, ep)
    after = _state(learner)
    if mode == "eval":  # nothing changes, and adapting again gives the same predictions
        _assert_same_state(before, after)
        torch.manual_seed(1)
        torch.testing.assert_close(_predict(learner, ep), first)
    else:  # training mode may update batch-norm running statistics, never parameters
        params = {n for n, _ in learner.named_parameters()}
        _assert_same_state({k: before[k] for k in params}, {k: after[k] for k in params})


@pytest.mark.parametrize(("family", "name", "options"), TRAINABLE)
def test_every_trainable_parameter_gets_a_gradient_from_episode_loss(
    family: str, name: str, options: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    fam = FAMILIES[family]
    learner = fam.build(name, options).train()
    loss = learner.episode_loss(fam.episodes(request)[2])
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in learner.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize(("family", "name", "options"), TRAINABLE)
def test_batch_loss_is_the_mean_episode_loss(
    family: str, name: str, options: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    """What the training loop minimises; learners that vectorise a meta-batch must keep this equality."""
    fam = FAMILIES[family]
    learner = fam.build(name, options).train()
    episodes = fam.episodes(request)[:2]
    torch.manual_seed(2)
    batch = learner.batch_loss(episodes)
    torch.manual_seed(2)
    each = torch.stack([learner.episode_loss(ep) for ep in episodes]).mean()
    torch.testing.assert_close(batch, each, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("family", "name"), LEARNERS)
def test_deepcopy_gives_an_independent_learner(family: str, name: str) -> None:
    learner = FAMILIES[family].build(name, None)
    clone = copy.deepcopy(learner)
    for p in clone.parameters():
        p.data.add_(1.0)
    for (n, p), (_, q) in zip(learner.named_parameters(), clone.named_parameters(), strict=True):
        assert not torch.equal(p, q), n


@pytest.mark.parametrize(("family", "name"), LEARNERS)
def test_options_are_frozen_and_unknown_options_are_refused_by_name(family: str, name: str) -> None:
    fam = FAMILIES[family]
    cls = fam.registry[name]
    assert issubclass(cls, FewShotLearner)
    assert issubclass(cls.Options, LearnerOptions)
    assert cls.Options.model_config.get("frozen") is True
    with pytest.raises((ConfigError, pydantic.ValidationError), match="no_such_option"):
        fam.build(name, {"no_such_option": 1})


@pytest.mark.parametrize(("family", "name"), CITED)
def test_learner_class_docstring_opens_with_its_paper_and_year(family: str, name: str) -> None:
    doc = (FAMILIES[family].registry[name].__doc__ or "").strip()
    first_paragraph = doc.split("\n\n")[0]
    assert re.search(r"(19|20)\d\d", first_paragraph), (
        f"{name}: docstring should open with the paper citation"
    )


# --- what only classification promises ------------------------------------------------------------------
INVARIANT = [
    pytest.param(c.values[1], c.values[2], id=c.id)
    for c in CASES
    if c.values[0] == "classification" and METHODS[c.values[1]].permutation_invariant  # type: ignore[index]
]
FROZEN = [
    pytest.param(c.values[1], c.values[2], id=c.id)
    for c in CASES
    if c.values[0] == "classification" and METHODS[c.values[1]].frozen_backbone  # type: ignore[index]
]
CLASSIFICATION = [
    pytest.param(c.values[1], c.values[2], id=c.id) for c in CASES if c.values[0] == "classification"
]


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


@pytest.mark.parametrize(("name", "options"), CLASSIFICATION)
def test_method_works_on_3d_volumes(name: str, options: dict[str, Any]) -> None:
    method = small_method(name, spatial_dims=3, channels=1, options=options).eval()
    ep = make_episode(n_way=2, n_shot=2, n_query=2, shape=(1, 16, 16, 16))
    logits = method.episode_logits(ep)
    assert logits.shape == (4, 2)
    assert torch.isfinite(logits).all()


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


def test_only_the_inner_loop_methods_ask_deployment_to_predict_one_image_at_a_time() -> None:
    """Their predictors normalise batch norm with the query batch's statistics (`per_image_prediction`)."""
    from medmeta.methods.inner_loop import InnerLoopMethod

    per_image = {n for n, c in METHODS.items() if c.per_image_prediction}
    assert per_image == {n for n, c in METHODS.items() if issubclass(c, InnerLoopMethod)}
    assert {"maml", "fomaml", "maml_pp", "meta_sgd", "anil", "reptile"} == per_image


def _batchnorm_parameter_ids(module: torch.nn.Module) -> set[int]:
    """ids of the batch-norm parameters of `module` (MAML++ replaces them with its own per-step ones)."""
    return {
        id(p)
        for m in module.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        for p in m.parameters()
    }


# --- every classification method on a library backbone (timm), where the weights carry the preprocessing ----
@pytest.fixture(scope="module")
def timm_backbone_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_timm_folder(tmp_path_factory.mktemp("timm") / "test_resnet", size=32)


def timm_method(name: str, folder: Path) -> FewShotMethod:
    torch.manual_seed(0)
    model = ModelConfig(backbone="timm:test_resnet", weights=str(folder))
    norm = Normalization(mean=(0.5,) * 3, std=(0.25,) * 3)
    backbone = make_backbone(model, in_channels=3, spatial_dims=2, image_size=16, normalization=norm)
    return build_method(name, backbone)


@pytest.mark.parametrize("name", NAMES)
def test_every_method_runs_on_a_pretrained_timm_backbone(name: str, timm_backbone_folder: Path) -> None:
    """Shapes, gradients into the pretrained weights, and a pure `adapt`, through timm's own network."""
    method = timm_method(name, timm_backbone_folder)
    ep = make_episode(n_way=3, n_shot=2, n_query=2)
    before = _state(method)
    with torch.no_grad():
        logits = method.eval().adapt(ep.support).predict(ep.query_images)
    assert logits.shape == (6, 3) and torch.isfinite(logits).all()
    _assert_same_state(before, _state(method))
    if METHODS[name].trainer == "episodic":
        method.train().episode_loss(ep).backward()
        network = method.backbone.backbone.network  # type: ignore[union-attr]
        norms = _batchnorm_parameter_ids(network)
        # MAML++ normalises with its own per-step batch-norm parameters instead of the network's
        weights = [p for p in network.parameters() if name != "maml_pp" or id(p) not in norms]
        assert weights and all(p.grad is not None for p in weights)


# --- every method on the other backbones: ResNet-12, a timm ViT, and the raw pixels where nothing is trained --
def _other_backbone(kind: str, tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    torch.manual_seed(0)
    norm = Normalization(mean=(0.5,) * 3, std=(0.25,) * 3)
    if kind == "resnet12":
        from medmeta.models.backbones import ResNet12

        return ResNet12(in_channels=3, widths=(4, 8, 8, 8))
    timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'medmeta[pretrained]')")
    from timm.models._hub import save_for_hf

    folder = tmp_path_factory.mktemp("vit") / "test_vit"
    save_for_hf(
        timm.create_model("test_vit", pretrained=False, num_classes=0), str(folder), safe_serialization=True
    )
    model = ModelConfig(backbone="timm:test_vit", weights=str(folder), input_size=32)
    return make_backbone(model, in_channels=3, spatial_dims=2, image_size=16, normalization=norm)


@pytest.fixture(scope="module")
def other_backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.nn.Module]:
    return {kind: _other_backbone(kind, tmp_path_factory) for kind in ("resnet12", "vit")}


@pytest.mark.parametrize("kind", ["resnet12", "vit"])
@pytest.mark.parametrize("name", NAMES)
def test_every_method_runs_on_resnet12_and_a_timm_vit(
    name: str, kind: str, other_backbones: dict[str, torch.nn.Module]
) -> None:
    """Shapes, a pure `adapt`, and a gradient into every backbone weight (second-order MAML included)."""
    method = build_method(name, copy.deepcopy(other_backbones[kind]))
    ep = make_episode(n_way=3, n_shot=2, n_query=2)
    before = _state(method)
    with torch.no_grad():
        logits = method.eval().adapt(ep.support).predict(ep.query_images)
    assert logits.shape == (6, 3) and torch.isfinite(logits).all()
    _assert_same_state(before, _state(method))
    if METHODS[name].trainer == "episodic":
        method.train().episode_loss(ep).backward()
        norms = _batchnorm_parameter_ids(method.backbone)
        # MAML++ normalises with its own per-step batch-norm parameters instead of the network's
        checked = [
            (n, p) for n, p in method.backbone.named_parameters() if name != "maml_pp" or id(p) not in norms
        ]
        missing = [n for n, p in checked if p.grad is None]
        assert checked and not missing, missing


@pytest.mark.parametrize("name", ["protonet", "linear_probe", "finetune"])
def test_the_frozen_methods_adapt_on_the_raw_pixels(name: str) -> None:
    from medmeta.models.backbones import build_backbone

    method = build_method(name, build_backbone("pixels:4", in_channels=3, image_size=16)).eval()
    ep = make_episode(n_way=3, n_shot=2, n_query=2)
    logits = method.adapt(ep.support).predict(ep.query_images)
    assert logits.shape == (6, 3) and torch.isfinite(logits).all()
