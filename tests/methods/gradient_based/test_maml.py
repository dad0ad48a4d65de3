"""MAML, first-order MAML, ANIL and Meta-SGD against independent float64 references."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medmeta._accel import kernels as fused_kernels
from medmeta.config import make_config
from medmeta.errors import ConfigError
from medmeta.methods import build_method
from medmeta.methods.gradient_based.anil import ANIL, ANILOptions
from medmeta.methods.gradient_based.maml import FOMAML, MAML, FOMAMLOptions, MAMLOptions
from medmeta.methods.gradient_based.meta_sgd import MetaSGD, MetaSGDOptions
from medmeta.methods.inner_loop import InnerLoopMethod
from medmeta.models.backbones import build_backbone
from medmeta.pipeline import default_normalization, evaluate_on_tests, train_method
from medmeta.tasks.episode import Episode
from tests._helpers.episodes import make_episode
from tests._helpers.inner_loop_reference import (
    N_WAY,
    central_difference,
    conv4_logits,
    episodes,
    smooth_backbone,
    tiny_backbone,
    unrolled_adapt,
)

TOL = 1e-8  # float64 max abs difference the issue asks for


def meta_gradient(method: InnerLoopMethod, eps: list[Episode]) -> dict[str, Tensor]:
    method.zero_grad()
    method.batch_loss(eps).backward()
    return {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


def reference_gradient(
    method: InnerLoopMethod, eps: list[Episode], steps: int, lr: float, *, first_order: bool, names: list[str]
) -> dict[str, Tensor]:
    p = method.model_parameters()
    losses = []
    for ep in eps:
        final = unrolled_adapt(p, ep, steps, lambda n, k: lr, names=names, first_order=first_order)[-1]
        losses.append(F.cross_entropy(conv4_logits(final, ep.query_images), ep.query_labels))
    grads = torch.autograd.grad(torch.stack(losses).mean(), list(p.values()))
    return dict(zip(p, grads, strict=True))


def max_diff(got: dict[str, Tensor], ref: dict[str, Tensor]) -> float:
    assert set(ref) <= set(got), set(ref) - set(got)
    return max(float((got[n] - ref[n]).abs().max()) for n in ref)


@pytest.mark.parametrize("kernels", ["compiled", "torch", "off"])
@pytest.mark.parametrize("task_threads", [1, 2])
def test_second_order_meta_gradient_equals_unrolled_autograd_in_float64(
    task_threads: int, kernels: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Conv4's second-order passes go through the fused block (its compiled kernels, its PyTorch ops) or,
    with MEDMETA_KERNELS=off, through PyTorch's own modules."""
    if kernels != "compiled":
        monkeypatch.setenv("MEDMETA_KERNELS", kernels)
    method = MAML(
        tiny_backbone(), MAMLOptions(n_way=N_WAY, inner_steps=2, inner_lr=0.3, task_threads=task_threads)
    )
    method.double()
    eps = episodes()
    ref = reference_gradient(method, eps, 2, 0.3, first_order=False, names=list(method.model_parameters()))
    assert max_diff(meta_gradient(method, eps), ref) < TOL


def test_auto_task_threads_run_second_order_tasks_concurrently_only_on_the_compiled_fused_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Concurrent second-order tasks fit learn2learn's memory only with the compiled fused kernels."""
    conv4 = MAML(tiny_backbone(), MAMLOptions(n_way=N_WAY))
    resnet = MAML(build_backbone("resnet12", in_channels=1, image_size=16), MAMLOptions(n_way=N_WAY))
    assert conv4.task_threads() == (0 if fused_kernels.fused_block_kernels() is not None else 1)
    assert resnet.task_threads() == 1
    assert FOMAML(tiny_backbone(), FOMAMLOptions(n_way=N_WAY)).task_threads() == 0
    assert MAML(tiny_backbone(), MAMLOptions(n_way=N_WAY, task_threads=2)).task_threads() == 2
    monkeypatch.setenv("MEDMETA_KERNELS", "torch")
    assert conv4.task_threads() == 1
    monkeypatch.setenv("MEDMETA_KERNELS", "off")
    assert conv4.task_threads() == 1 and not conv4.fused_training()


@pytest.mark.parametrize("kernels", ["compiled", "torch", "off"])
def test_first_order_meta_gradient_equals_a_hand_written_update(
    kernels: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the compiled kernels first order also runs through the fused block; else PyTorch's ops."""
    if kernels != "compiled":
        monkeypatch.setenv("MEDMETA_KERNELS", kernels)
    method = FOMAML(tiny_backbone(), FOMAMLOptions(n_way=N_WAY, inner_steps=3, inner_lr=0.2)).double()
    eps = episodes()
    ref = reference_gradient(method, eps, 3, 0.2, first_order=True, names=list(method.model_parameters()))
    assert max_diff(meta_gradient(method, eps), ref) < TOL


def test_second_order_meta_gradient_equals_a_central_finite_difference() -> None:
    method = MAML(smooth_backbone(), MAMLOptions(n_way=N_WAY, inner_steps=2, inner_lr=0.3)).double()
    eps = episodes(2)
    grads = meta_gradient(method, eps)
    params = [p for _, p in method.named_parameters()]
    g = torch.Generator().manual_seed(1)
    direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    analytic = sum(
        float((grads[n] * u).sum()) for (n, _), u in zip(method.named_parameters(), direction, strict=True)
    )
    numeric = central_difference(lambda: method.batch_loss(eps), params, direction)
    assert abs(analytic - numeric) < TOL


def test_checkpointing_the_inner_loop_gives_the_same_meta_gradient() -> None:
    eps = episodes(2)
    plain = MAML(tiny_backbone(), MAMLOptions(n_way=N_WAY, inner_steps=3, inner_lr=0.2)).double()
    ckpt = MAML(tiny_backbone(), MAMLOptions(n_way=N_WAY, inner_steps=3, inner_lr=0.2, checkpoint_inner=True))
    ckpt.double().load_state_dict(plain.state_dict())
    assert max_diff(meta_gradient(ckpt, eps), meta_gradient(plain, eps)) < 1e-12


def test_anil_adapts_only_the_head_and_its_meta_gradient_equals_unrolled_autograd() -> None:
    method = ANIL(tiny_backbone(), ANILOptions(n_way=N_WAY, inner_steps=3, inner_lr=0.5)).double()
    assert method.adapted == ("head.weight", "head.bias")
    eps = episodes()
    ref = reference_gradient(method, eps, 3, 0.5, first_order=False, names=["head.weight", "head.bias"])
    got = meta_gradient(method, eps)
    assert max_diff(got, ref) < TOL
    assert float(got["backbone.features.0.weight"].abs().max()) > 0  # the body is meta-learned


def test_meta_sgd_learns_per_weight_rates_and_its_meta_gradient_equals_unrolled_autograd() -> None:
    method = MetaSGD(tiny_backbone(), MetaSGDOptions(n_way=N_WAY, inner_steps=2, inner_lr=0.1)).double()
    with torch.no_grad():  # distinct rates per weight
        for a in method.inner_lrs:
            a.uniform_(0.05, 0.2, generator=torch.Generator().manual_seed(a.numel()))
    eps = episodes()
    p = method.model_parameters()
    alphas = dict(zip(method.adapted, method.inner_lrs, strict=True))
    losses = []
    for ep in eps:
        final = unrolled_adapt(
            p, ep, 2, lambda n, k: alphas[n], names=list(method.adapted), first_order=False
        )[-1]
        losses.append(F.cross_entropy(conv4_logits(final, ep.query_images), ep.query_labels))
    wrt = list(p.values()) + list(method.inner_lrs)
    ref_grads = torch.autograd.grad(torch.stack(losses).mean(), wrt)
    names = list(p) + [f"inner_lrs.{i}" for i in range(len(method.inner_lrs))]
    assert max_diff(meta_gradient(method, eps), dict(zip(names, ref_grads, strict=True))) < TOL
    assert method.inner_lrs[0].shape == p[method.adapted[0]].shape


def test_adapt_under_no_grad_gives_the_same_logits_without_keeping_a_graph() -> None:
    method = MAML(tiny_backbone(), MAMLOptions(n_way=N_WAY, inner_steps=2)).double().eval()
    ep = episodes(1)[0]
    with torch.no_grad():
        predictor = method.adapt(ep.support)
        logits = predictor.predict(ep.query_images)
    assert all(t.grad_fn is None for t in predictor.params.values())
    expected = method.adapt(ep.support).predict(ep.query_images)
    torch.testing.assert_close(logits, expected.detach(), rtol=0, atol=1e-12)


def test_eval_mode_adapts_with_eval_steps_and_train_mode_with_inner_steps() -> None:
    method = MAML(tiny_backbone(), MAMLOptions(n_way=N_WAY, inner_steps=1, eval_steps=4)).double()
    support = episodes(1)[0].support
    assert method.train().adapt(support).step == 1
    with torch.no_grad():
        assert method.eval().adapt(support).step == 4


@pytest.mark.parametrize("cls", [MAML, FOMAML, ANIL, MetaSGD])
def test_batch_norm_buffers_are_never_read_or_written(cls: type[InnerLoopMethod]) -> None:
    method = cls(tiny_backbone(), cls.Options(n_way=N_WAY)).double().train()
    with torch.no_grad():
        for name, buf in method.named_buffers():  # absurd statistics: any use of them would show
            if "running" in name:
                buf.fill_(50.0)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    ep = episodes(1)[0]
    logits = method.adapt(ep.support).predict(ep.query_images)
    method.batch_loss([ep]).backward()
    for k, v in method.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        logits_eval = method.eval().adapt(ep.support).predict(ep.query_images)
    torch.testing.assert_close(logits_eval, logits.detach(), rtol=0, atol=1e-12)


def test_a_test_episode_with_fewer_classes_uses_the_first_head_rows() -> None:
    method = MAML(tiny_backbone(), MAMLOptions(n_way=5)).double().eval()
    ep = make_episode(n_way=3, n_shot=2, n_query=2, shape=(1, 16, 16), dtype=torch.float64)
    with torch.no_grad():
        assert method.episode_logits(ep).shape == (6, 3)


def test_an_episode_with_more_classes_than_head_rows_names_the_option() -> None:
    method = MAML(tiny_backbone(), MAMLOptions(n_way=2)).double()
    with pytest.raises(ConfigError, match="n_way=3"):
        method.episode_loss(episodes(1)[0])


def test_an_adapt_prefix_that_matches_nothing_is_refused_with_the_names() -> None:
    with pytest.raises(ConfigError, match=r"'backbone\.nope' matches no adaptable parameter.*head\.weight"):
        MAML(tiny_backbone(), MAMLOptions(adapt="head,backbone.nope"))


def test_adapt_prefixes_select_layers() -> None:
    method = MAML(tiny_backbone(), MAMLOptions(adapt="backbone.features.12, head"))
    assert method.adapted == (
        "backbone.features.12.weight",
        "backbone.features.12.bias",
        "head.weight",
        "head.bias",
    )


def test_a_backbone_without_out_features_needs_the_feature_dim_option() -> None:
    backbone = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    with pytest.raises(ConfigError, match="feature_dim"):
        MAML(backbone)


def test_any_module_with_batch_norm_works_with_the_functional_loop() -> None:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.BatchNorm1d(4),
    )
    method = MAML(backbone, MAMLOptions(n_way=N_WAY, feature_dim=4, inner_steps=2, task_threads=2)).double()
    eps = episodes(2)
    p = method.model_parameters()

    def forward(q: dict[str, Tensor], x: Tensor, k: int) -> Tensor:
        h = F.conv2d(x, q["backbone.0.weight"], q["backbone.0.bias"])
        h = F.batch_norm(h, None, None, q["backbone.1.weight"], q["backbone.1.bias"], True)
        h = F.relu(h).mean(dim=(2, 3))
        h = F.batch_norm(h, None, None, q["backbone.5.weight"], q["backbone.5.bias"], True)
        return F.linear(h, q["head.weight"], q["head.bias"])

    losses = []
    for ep in eps:
        final = unrolled_adapt(p, ep, 2, lambda n, k: 0.4, names=list(p), first_order=False, forward=forward)[
            -1
        ]
        losses.append(F.cross_entropy(forward(final, ep.query_images, 2), ep.query_labels))
    ref = dict(zip(p, torch.autograd.grad(torch.stack(losses).mean(), list(p.values())), strict=True))
    assert max_diff(meta_gradient(method, eps), ref) < TOL


@pytest.mark.parametrize("name", ["maml", "maml_pp", "meta_sgd", "reptile"])
def test_resnet12_from_the_backbone_registry_meta_trains_and_adapts(name: str) -> None:
    torch.manual_seed(0)
    backbone = build_backbone("resnet12", in_channels=1, widths=(4, 4, 4, 4))
    method = build_method(name, backbone, {"n_way": 5, "inner_steps": 2, "eval_steps": 3})
    ep = make_episode(n_way=3, n_shot=2, n_query=2, shape=(1, 17, 19))
    method.batch_loss([ep, ep]).backward()
    assert all(p.grad is not None for p in method.parameters() if p.requires_grad)
    with torch.no_grad():
        assert method.eval().episode_logits(ep).shape == (6, 3)


@pytest.mark.data
@pytest.mark.parametrize("name", ["fomaml", "anil"])
def test_meta_training_on_blood_cells_beats_chance_on_unseen_classes(data_dir: Path, name: str) -> None:
    """A few first-order/ANIL meta-iterations on 28x28 blood-cell images, tested 3-way on unseen cells."""
    cfg = make_config(
        {
            "data": {
                "train": ["blood_pbc:basophil,eosinophil,erythroblast,ig,lymphocyte"],
                "test": ["blood_pbc:monocyte,neutrophil,platelet"],
                "image_size": 28,
                "channels": 1,
                "data_dir": str(data_dir),
            },
            "episodes": {"n_way": 5, "n_shot": 5, "n_query": 5},
            "method": {"name": name, "options": {"inner_steps": 2, "eval_steps": 5, "inner_lr": 0.3}},
            "train": {
                "epochs": 1,
                "episodes_per_epoch": 40,
                "meta_batch": 4,
                "val_episodes": 0,
                "device": "cpu",
            },
            "eval": {"episodes": 40, "n_way": 3, "n_shot": 5, "n_query": 5},
        }
    )
    method, _, data = train_method(cfg)
    (result,) = evaluate_on_tests(method, cfg, data.test, normalization=default_normalization(1))
    assert result.accuracy - result.ci95 > 1 / 3, result.summary()


@pytest.mark.data
def test_zero_head_adapts_to_more_ways_than_meta_training_had(data_dir: Path) -> None:
    """First-order MAML meta-trained on 2-way blood-cell episodes (one inner step), tested 5-way on five
    unseen cell types: the learned head's three untrained rows barely move in one step, a zero head
    starts every class alike (measured: 31.0 ± 2.6 % against 51.2 ± 2.0 %)."""
    results = {}
    for zero_head in (False, True):
        cfg = make_config(
            {
                "data": {
                    "train": ["blood_pbc:basophil,eosinophil,erythroblast"],
                    "test": ["blood_pbc:ig,lymphocyte,monocyte,neutrophil,platelet"],
                    "image_size": 28,
                    "channels": 1,
                    "data_dir": str(data_dir),
                },
                "episodes": {"n_way": 2, "n_shot": 5, "n_query": 5},
                "method": {"name": "fomaml", "options": {"n_way": 5, "zero_head": zero_head}},
                "train": {"epochs": 1, "episodes_per_epoch": 40, "meta_batch": 4, "val_episodes": 0},
                "eval": {"episodes": 40, "n_way": 5, "n_shot": 5, "n_query": 5},
            }
        )
        method, _, data = train_method(cfg)
        (results[zero_head],) = evaluate_on_tests(
            method, cfg, data.test, normalization=default_normalization(1)
        )
    zero, learned = results[True], results[False]
    assert zero.accuracy - zero.ci95 > max(0.2, learned.accuracy + learned.ci95), (
        zero.summary(),
        learned.summary(),
    )


def test_zero_head_meta_gradient_equals_unrolled_autograd_from_a_zero_head() -> None:
    """Second order in float64: theta_0's head is zero for every task; the head's parameters get no
    meta-gradient (they are not used)."""
    method = MAML(tiny_backbone(), MAMLOptions(n_way=N_WAY, inner_steps=2, inner_lr=0.3, zero_head=True))
    method.double()
    eps = episodes()
    got = meta_gradient(method, eps)
    assert "head.weight" not in got and "head.bias" not in got
    p = method.model_parameters()
    start = {
        n: (torch.zeros_like(v, requires_grad=True) if n.startswith("head.") else v) for n, v in p.items()
    }
    losses = []
    for ep in eps:
        final = unrolled_adapt(start, ep, 2, lambda n, k: 0.3, names=list(start), first_order=False)[-1]
        losses.append(F.cross_entropy(conv4_logits(final, ep.query_images), ep.query_labels))
    backbone = [n for n in p if n.startswith("backbone.")]
    ref = dict(
        zip(backbone, torch.autograd.grad(torch.stack(losses).mean(), [p[n] for n in backbone]), strict=True)
    )
    assert max_diff(got, ref) < TOL
    with torch.no_grad():
        adapted = method.eval().adapt(eps[0].support)
    assert adapted.params["head.weight"].abs().sum() > 0  # written by the inner steps, from zero


def test_zero_head_needs_the_head_adapted_and_reptile_leaves_its_head_alone() -> None:
    with pytest.raises(ConfigError, match="zero_head starts the head at zero, so it must be adapted"):
        MAML(tiny_backbone(), MAMLOptions(n_way=N_WAY, adapt="backbone", zero_head=True))
    reptile = build_method("reptile", tiny_backbone(), {"n_way": N_WAY, "zero_head": True}).double()
    reptile.batch_loss(episodes()).backward()
    assert reptile.head.weight.grad is None and reptile.head.bias.grad is None
    assert all(p.grad is not None for n, p in reptile.named_parameters() if n.startswith("backbone."))


@pytest.mark.parametrize("kernels", ["compiled", "torch", "off"])
def test_evaluation_passes_take_the_fused_path_only_with_the_compiled_kernels(
    kernels: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adapting and predicting under no_grad (evaluation) run Conv4 through the compiled fused block
    (more accurate float32 statistics than PyTorch's channels-last batch norm) and give, in float64, the
    same logits as PyTorch's ops."""
    import medmeta._accel.fused_block as fused_block

    if kernels != "compiled":
        monkeypatch.setenv("MEDMETA_KERNELS", kernels)
    calls: list[int] = []
    real = fused_block.fused_conv4_forward

    def counting(*args: object, **kw: object) -> Tensor | None:
        calls.append(1)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fused_block, "fused_conv4_forward", counting)
    method = MAML(tiny_backbone(), MAMLOptions(n_way=N_WAY, inner_steps=2, inner_lr=0.3)).double().eval()
    ep = episodes()[0]
    with torch.no_grad():
        logits = method.adapt(ep.support).predict(ep.query_images)
    fused = kernels == "compiled" and fused_kernels.fused_block_kernels() is not None
    assert bool(calls) == fused
    monkeypatch.setattr(fused_block, "fused_conv4_forward", lambda *a, **k: None)  # PyTorch's ops
    with torch.no_grad():
        ref = method.adapt(ep.support).predict(ep.query_images)
    assert torch.allclose(logits, ref, atol=1e-10, rtol=0)
