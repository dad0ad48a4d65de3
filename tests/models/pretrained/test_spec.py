from __future__ import annotations

import pytest

from medmeta.errors import ConfigError
from medmeta.models.pretrained import BackboneSpec


@pytest.mark.parametrize(
    ("text", "library", "name", "arch", "tag"),
    [
        ("timm:resnet18.a1_in1k", "timm", "resnet18.a1_in1k", "resnet18", "a1_in1k"),
        ("timm:resnet18", "timm", "resnet18", "resnet18", None),
        ("timm:vit_tiny_patch16_224", "timm", "vit_tiny_patch16_224", "vit_tiny_patch16_224", None),
        ("open_clip:ViT-B-32", "open_clip", "ViT-B-32", "ViT-B-32", None),
        (
            "open_clip:ViT-B-32.laion2b_s34b_b79k",
            "open_clip",
            "ViT-B-32.laion2b_s34b_b79k",
            "ViT-B-32",
            "laion2b_s34b_b79k",
        ),
        (
            "open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
            "open_clip",
            "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
            "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
            None,
        ),
        ("hf:facebook/dinov2-small", "hf", "facebook/dinov2-small", "facebook/dinov2-small", None),
        ("hf:microsoft/rad-dino", "hf", "microsoft/rad-dino", "microsoft/rad-dino", None),
    ],
)
def test_spec_strings_parse_into_library_name_arch_and_tag(
    text: str, library: str, name: str, arch: str, tag: str | None
) -> None:
    spec = BackboneSpec.parse(text)
    assert (spec.library, spec.name, spec.tag) == (library, name, tag)
    if library != "hf" and not name.startswith("hf-hub:"):
        assert spec.arch == arch
    assert str(spec) == text
    assert BackboneSpec.parse(spec) is spec


@pytest.mark.parametrize("text", ["resnet18", "torchvision:resnet18", "TIMM:resnet18", ":resnet18"])
def test_unknown_prefix_lists_the_accepted_forms(text: str) -> None:
    with pytest.raises(
        ConfigError, match=r"has no known library prefix; use one of: timm:ARCH\[\.TAG\].*hf:ORG/REPO"
    ) as err:
        BackboneSpec.parse(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("timm:", "is empty or has spaces"),
        ("timm:res net", "is empty or has spaces"),
        ("hf:dinov2-small", "is not a hub repository id; write hf:ORG/REPO"),
        ("open_clip:hf-hub:BiomedCLIP", "needs a repository: open_clip:hf-hub:ORG/REPO"),
    ],
)
def test_malformed_names_say_what_to_write(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        BackboneSpec.parse(text)
