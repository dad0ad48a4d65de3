"""The transfer-baseline base class: heads, the supervised loss and its gradients, switching methods."""

from __future__ import annotations

import pytest
import torch

from medmeta.errors import ConfigError
from medmeta.methods import METHODS, build_method, switch_method
from medmeta.methods.transfer.base import SupervisedMethod, backbone_width, transform_features
from medmeta.models.backbones import Conv4
from medmeta.models.heads import CosineHead, build_head, cosine_logits
from tests._helpers.transfer import (
    Flat,
    single_thread,  # noqa: F401  (autouse fixture)
)

SUPERVISED = sorted(n for n, c in METHODS.items() if issubclass(c, SupervisedMethod))


def build(name: str, **options: object) -> SupervisedMethod:
    torch.manual_seed(0)
    method = build_method(name, Conv4(3, hidden=8, image_size=16), dict(options))
    assert isinstance(method, SupervisedMethod)
    return method


def test_every_transfer_baseline_is_registered_as_supervised() -> None:
    assert {"finetune", "linear_probe", "simpleshot", "baseline_pp"} <= set(SUPERVISED)
    assert all(METHODS[n].trainer == "supervised" for n in SUPERVISED)


@pytest.mark.parametrize("name", SUPERVISED)
@pytest.mark.parametrize(("label_space", "head"), [("union", "linear"), ("per_domain", "cosine")])
def test_every_trainable_parameter_gets_a_gradient_from_the_supervised_loss(
    name: str, label_space: str, head: str
) -> None:
    method = build(name, label_space=label_space, pretrain_head=head).train()
    method.set_head_sizes([3, 2] if label_space == "per_domain" else [5])
    images = torch.randn(6, 3, 16, 16)
    domains = torch.tensor([0, 0, 0, 1, 1, 1]) if label_space == "per_domain" else None
    labels = (
        torch.tensor([0, 1, 2, 0, 1, 1]) if label_space == "per_domain" else torch.tensor([0, 1, 2, 3, 4, 0])
    )
    loss = method.supervised_loss(images, labels, domains)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"


def test_per_domain_loss_is_each_heads_cross_entropy_averaged_over_images() -> None:
    method = build("simpleshot", label_space="per_domain").eval()
    method.set_head_sizes([3, 2])
    images, labels, domains = (
        torch.randn(5, 3, 16, 16),
        torch.tensor([0, 2, 1, 0, 1]),
        torch.tensor([0, 0, 1, 1, 1]),
    )
    f = method.backbone(images)
    expected = (
        torch.nn.functional.cross_entropy(method.heads[0](f[:2]), labels[:2], reduction="sum")
        + torch.nn.functional.cross_entropy(method.heads[1](f[2:]), labels[2:], reduction="sum")
    ) / 5
    torch.testing.assert_close(method.supervised_loss(images, labels, domains), expected)


def test_a_method_without_heads_explains_how_to_get_them() -> None:
    with pytest.raises(ConfigError, match="set_head_sizes or train it with fit_supervised"):
        build("simpleshot").supervised_loss(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))


def test_setting_the_same_head_sizes_twice_keeps_the_heads() -> None:
    method = build("simpleshot")
    method.set_head_sizes([4])
    head = method.heads[0]
    method.set_head_sizes([4])
    assert method.heads[0] is head
    with pytest.raises(ConfigError, match="does not match"):
        method.set_head_sizes([5])


def test_cosine_head_logits_are_scaled_cosines_bounded_by_the_scale() -> None:
    head = build_head("cosine", 4, 3, scale=5.0)
    assert isinstance(head, CosineHead)
    f = torch.randn(7, 4)
    expected = 5.0 * torch.nn.functional.cosine_similarity(f[:, None], head.weight[None], dim=-1)
    torch.testing.assert_close(head(f), expected)
    assert head(f).abs().max() <= 5.0 + 1e-5
    torch.testing.assert_close(cosine_logits(f[None], head.weight[None], 5.0)[0], expected)  # batched
    with pytest.raises(ValueError, match="'linear' or 'cosine'"):
        build_head("mlp", 4, 3)  # type: ignore[arg-type]


def test_feature_transforms_centre_then_normalise() -> None:
    f, mean = torch.tensor([[3.0, 4.0], [1.0, 1.0]]), torch.tensor([1.0, 1.0])
    torch.testing.assert_close(transform_features(f, mean, "none"), f)
    torch.testing.assert_close(transform_features(f, mean, "l2n")[0], torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(transform_features(f, mean, "cl2n")[0], torch.tensor([2.0, 3.0]) / 13**0.5)
    assert transform_features(f, mean, "cl2n")[1].abs().sum() == 0  # the mean itself maps to zero


def test_a_backbone_without_out_features_is_rejected_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"set backbone\.out_features"):
        backbone_width(torch.nn.Flatten())
    assert backbone_width(Flat(6)) == 6


def test_switch_method_keeps_the_pretrained_weights_behind_another_rule() -> None:
    method = build("simpleshot", pretrain_head="cosine")
    method.set_head_sizes([4])
    method.feature_mean.fill_(0.5)
    probe = switch_method(method, "linear_probe", {"c": 3.0})
    assert type(probe).__name__ == "LinearProbe"
    assert probe.options.c == 3.0  # type: ignore[attr-defined]
    assert probe.options.head_sizes == (4,) and probe.options.pretrain_head == "cosine"
    for k, v in method.state_dict().items():
        assert torch.equal(probe.state_dict()[k], v), k
    probe.feature_mean.fill_(0.0)
    assert method.feature_mean[0] == 0.5  # a copy, not a view
    with pytest.raises(ConfigError, match="not a transfer baseline"):
        switch_method(method, "protonet")


def test_options_of_the_wrong_kind_are_rejected_with_the_fix() -> None:
    from medmeta.methods.base import MethodOptions
    from medmeta.methods.transfer.simpleshot import SimpleShot

    with pytest.raises(
        TypeError, match=r"SimpleShot takes SimpleShotOptions, got MethodOptions: .*from_options"
    ):
        SimpleShot(Flat(2), MethodOptions())  # type: ignore[arg-type]
