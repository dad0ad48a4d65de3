"""Every self-supervised method: lightly's own loss of the same outputs, gradients for every trainable
parameter, momentum copies moved as lightly's ``update_momentum`` says, and learning on real images."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from medmeta.config import PretrainConfig, SSLConfig
from medmeta.data.registry import DomainSpec
from medmeta.methods.self_supervised import SSL_METHODS, SelfSupervisedMethod, build_ssl_method
from medmeta.models.backbones import Conv4
from medmeta.pipeline import default_normalization
from medmeta.train.self_supervised import UnlabelledImages, ViewBatches

lightly_loss = pytest.importorskip(
    "lightly.loss", reason="lightly is not installed (pip install 'medmeta[ssl]')"
)
lightly_utils = pytest.importorskip("lightly.models.utils")
lightly_scheduler = pytest.importorskip("lightly.utils.scheduler")

SMALL = {"hidden_dim": 16, "output_dim": 8, "bottleneck_dim": 4, "memory_bank_size": 32, "local_crops": 2}


def tiny(name: str, **cfg: object) -> SelfSupervisedMethod:
    torch.manual_seed(0)
    ssl = SSLConfig(method=name, **{**SMALL, **cfg})  # type: ignore[arg-type]
    return build_ssl_method(ssl, Conv4(1, hidden=8, image_size=16), 8)


def random_views(name: str, batch: int = 6, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = 2 + (SMALL["local_crops"] if name == "dino" else 0)
    return [torch.randn(batch, 1, 16, 16, generator=g) for _ in range(n)]


@pytest.mark.parametrize("name", sorted(SSL_METHODS))
def test_every_trainable_parameter_gets_a_finite_gradient(name: str) -> None:
    method = tiny(name)
    method.batch_loss(random_views(name)).backward()
    trainable = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    assert trainable
    for n, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert any(p.grad.abs().sum() > 0 for _, p in trainable if p.grad is not None)


@pytest.mark.parametrize("name", sorted(SSL_METHODS))
def test_the_backbone_is_trained_and_the_momentum_copies_are_not(name: str) -> None:
    method = tiny(name)
    assert all(p.requires_grad for p in method.backbone.parameters())
    frozen = [n for n, p in method.named_parameters() if not p.requires_grad]
    assert bool(frozen) == (name != "simclr")
    online = [n for n in frozen if n.startswith(("backbone.", "projection_head.", "prediction_head."))]
    # DINO's head normalises its last layer, whose fixed norm lightly freezes (norm_last_layer)
    assert online == (["projection_head.last_layer.weight_g"] if name == "dino" else [])


def test_simclr_loss_is_lightlys_nt_xent_of_the_projections() -> None:
    method, views = tiny("simclr", temperature=0.3), random_views("simclr")
    expected = lightly_loss.NTXentLoss(temperature=0.3)(method.project(views[0]), method.project(views[1]))
    torch.testing.assert_close(method.batch_loss(views), expected)


def test_moco_keeps_its_memory_bank_in_the_state_dict() -> None:
    method = tiny("moco")
    method.batch_loss(random_views("moco"))
    state = method.state_dict()
    assert torch.equal(state["criterion.memory_bank.bank"], method.criterion.memory_bank.bank)
    assert int(state["criterion.memory_bank.bank_ptr"]) == 6


def test_moco_loss_is_lightlys_nt_xent_with_the_same_memory_bank() -> None:
    method, views = tiny("moco", temperature=0.2), random_views("moco")
    method.batch_loss(random_views("moco", seed=1))  # the bank now holds keys
    before = copy.deepcopy(method)
    reference = lightly_loss.NTXentLoss(temperature=0.2, memory_bank_size=(32, 8))
    reference.memory_bank.bank.copy_(before.criterion.memory_bank.bank)
    reference.memory_bank.bank_ptr.copy_(before.criterion.memory_bank.bank_ptr)
    expected = reference(before.query(views[0]), before.key(views[1]))
    torch.testing.assert_close(method.batch_loss(views), expected)


def test_byol_loss_is_lightlys_symmetrised_negative_cosine_similarity() -> None:
    method, views = tiny("byol"), random_views("byol")
    ncs = lightly_loss.NegativeCosineSimilarity()
    p0, p1 = method.predict(views[0]), method.predict(views[1])
    z0, z1 = method.target(views[0]), method.target(views[1])
    torch.testing.assert_close(method.batch_loss(views), 0.5 * (ncs(p0, z1) + ncs(p1, z0)))


def test_dino_loss_is_lightlys_dino_loss_with_the_same_centre() -> None:
    method, views = tiny("dino", temperature=0.2, teacher_temperature=0.05), random_views("dino")
    method.batch_loss(random_views("dino", seed=1))  # the centre has moved from zero
    reference = lightly_loss.DINOLoss(
        output_dim=8,
        warmup_teacher_temp=0.04,
        teacher_temp=0.05,
        warmup_teacher_temp_epochs=0,
        student_temp=0.2,
    )
    reference.center.copy_(method.criterion.center)
    teacher = [method.teacher(v) for v in views[:2]]
    student = [method.student(v) for v in views]
    expected = reference(teacher, student, epoch=0)
    torch.testing.assert_close(method.batch_loss(views), expected)
    torch.testing.assert_close(method.criterion.center, reference.center)


def snapshot(module: torch.nn.Module) -> torch.nn.ParameterList:
    """The parameters of `module` as a detached copy (DINO's weight-normalised head cannot be deep-copied)."""
    return torch.nn.ParameterList([torch.nn.Parameter(p.detach().clone()) for p in module.parameters()])


@pytest.mark.parametrize("name", ["byol", "dino", "moco"])
def test_after_a_step_the_momentum_copies_move_as_lightlys_update_momentum_says(name: str) -> None:
    method = tiny(name, momentum=0.9, momentum_end=1.0)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    method.batch_loss(random_views(name)).backward()
    opt.step()
    online = [method.backbone, method.projection_head]
    copies = [
        getattr(method, n)
        for n in ("backbone_momentum", "projection_head_momentum", "teacher_backbone", "teacher_head")
        if hasattr(method, n)
    ]
    before = [snapshot(c) for c in copies]
    expected = [snapshot(c) for c in copies]
    m = lightly_scheduler.cosine_schedule(3, 10, 0.9, 1.0)
    assert 0.9 < m < 1.0
    for source, target in zip(online, expected, strict=True):
        lightly_utils.update_momentum(snapshot(source), target, m)
    method.after_step(3, 10)
    for got, want, old in zip(copies, expected, before, strict=True):
        for (n, a), b in zip(got.named_parameters(), want.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
        assert any(not torch.equal(a, b) for a, b in zip(got.parameters(), old.parameters(), strict=True))


@pytest.mark.data
@pytest.mark.parametrize("name", sorted(SSL_METHODS))
def test_the_loss_decreases_on_real_blood_cell_views(name: str, data_dir: Path) -> None:
    ds = DomainSpec.parse("blood_pbc").load(root=data_dir, image_size=16, channels=1)
    images = UnlabelledImages.build([ds], max_images=64, seed=0)
    cfg = PretrainConfig.model_validate({"ssl": {"method": name, **SMALL}, "data": {"image_size": 16}})
    source = ViewBatches.from_config(images, cfg, prepare=default_normalization(1))
    views = source.batch(0, torch.device("cpu"))
    method = tiny(name)
    opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for s in range(12):
        loss = method.batch_loss(views)
        losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
        opt.zero_grad()
        method.after_step(s, 12)
    assert all(torch.isfinite(torch.tensor(losses)))
    first = 1 if name == "moco" else 0  # MoCo's first negatives are the random initial queue
    assert min(losses[-3:]) < losses[first], losses
