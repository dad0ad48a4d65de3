from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.func import functional_call

from medmeta._optional import OptionalDependencyError
from medmeta.errors import ConfigError
from medmeta.models.pretrained import PretrainedBackbone, load_backbone

pytest.importorskip("timm", reason="timm is not installed (pip install 'medmeta[pretrained]')")


@pytest.fixture
def backbone(timm_folder: tuple[Path, Any]) -> PretrainedBackbone:
    return load_backbone("timm:test_vit", weights=timm_folder[0])


def test_functional_call_with_its_own_parameters_matches_forward(backbone: PretrainedBackbone) -> None:
    x = torch.randn(2, 3, 160, 160)
    params = dict(backbone.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(functional_call(backbone, params, (x,)), backbone(x))


def test_gradients_reach_every_parameter_through_functional_call(backbone: PretrainedBackbone) -> None:
    x = torch.randn(2, 3, 160, 160)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in backbone.named_parameters()}
    features = functional_call(backbone, params, (x,))
    grads = torch.autograd.grad(features.square().mean(), list(params.values()), allow_unused=True)
    missing = [
        name for name, g in zip(params, grads, strict=True) if g is None or not torch.isfinite(g).all()
    ]
    assert not missing
    # a first-order inner step changes the features
    stepped = {k: v - 0.1 * g for (k, v), g in zip(params.items(), grads, strict=True)}
    assert not torch.allclose(functional_call(backbone, stepped, (x,)), features)


def test_backbone_refuses_input_with_the_wrong_channels(backbone: PretrainedBackbone) -> None:
    with pytest.raises(
        ValueError, match=r"expects preprocessed images \(N, 3, H, W\), got \(2, 1, 160, 160\)"
    ):
        backbone(torch.zeros(2, 1, 160, 160))


def test_preprocessed_uint8_images_go_straight_into_the_backbone(backbone: PretrainedBackbone) -> None:
    images = torch.randint(0, 256, (3, 1, 97, 131), dtype=torch.uint8)
    assert backbone(backbone.preprocessing(images)).shape == (3, backbone.out_features)


def test_weights_with_pretrained_false_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="weights given with pretrained=False"):
        load_backbone("timm:test_vit", weights=tmp_path, pretrained=False)


def test_a_missing_library_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(OptionalDependencyError, match=r"pip install 'medmeta\[pretrained\]'"):
        load_backbone("timm:test_vit", pretrained=False)
