"""`load_backbone`: one entry point over the three libraries' loaders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medmeta.errors import ConfigError
from medmeta.models.pretrained.backbone import PretrainedBackbone
from medmeta.models.pretrained.hf_loader import load_hf
from medmeta.models.pretrained.open_clip_loader import load_open_clip
from medmeta.models.pretrained.spec import BackboneSpec
from medmeta.models.pretrained.timm_loader import load_timm

LOADERS: dict[str, Callable[..., PretrainedBackbone]] = {
    "timm": load_timm,
    "open_clip": load_open_clip,
    "hf": load_hf,
}


def load_backbone(
    spec: str | BackboneSpec, *, weights: str | Path | None = None, pretrained: bool = True
) -> PretrainedBackbone:
    """Load a pretrained image backbone with its preprocessing.

    Args:
        spec: ``timm:ARCH[.TAG]``, ``open_clip:ARCH.TAG``, ``open_clip:hf-hub:ORG/REPO`` or ``hf:ORG/REPO``.
        weights: a local ``.safetensors`` file (timm, open_clip) or a folder in the library's hub layout
            (timm: ``config.json`` + ``model.safetensors``; open_clip: ``open_clip_config.json`` +
            ``open_clip_model.safetensors``; hf: ``config.json`` + ``model.safetensors`` +
            ``preprocessor_config.json``). None downloads from the Hugging Face hub (or its cache).
        pretrained: False builds the architecture with random weights (timm only) and its default
            preprocessing.

    Returns:
        A `PretrainedBackbone` in eval mode: ``(N, in_channels, size, size)`` -> ``(N, out_features)``.

    Raises:
        ConfigError: unknown spec, missing path, offline without the files (the message says what to download
            and where), or an unsupported combination.
        CheckpointError: pickle weights, a config without preprocessing, or weights that do not fit.
        OptionalDependencyError: the library is not installed (``pip install 'medmeta[pretrained]'``).

    Example:
        >>> backbone = load_backbone("timm:resnet18.a1_in1k", weights="resnet18.a1_in1k/")  # doctest: +SKIP
        >>> features = backbone(backbone.preprocessing(images_uint8))  # doctest: +SKIP
    """
    parsed = BackboneSpec.parse(spec)
    if weights is not None and not pretrained:
        raise ConfigError(f"{parsed}: weights given with pretrained=False; drop one of them")
    return LOADERS[parsed.library](parsed, weights=weights, pretrained=pretrained)
