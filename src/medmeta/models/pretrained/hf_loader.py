"""Hugging Face transformers backbones: ``AutoModel`` vision models, features = ``pooler_output``.

For DINOv2 (and RAD-DINO) ``pooler_output`` is the CLS token after the final layer norm. The folder is the hub
layout ``config.json`` + ``model.safetensors`` (or its sharded index) + ``preprocessor_config.json``, loaded
with ``from_pretrained(folder, local_files_only=True, use_safetensors=True)``; the preprocessing is the folder's
image processor (``AutoImageProcessor``), with the backend transformers picks for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from medmeta._optional import optional_import
from medmeta.errors import CheckpointError, ConfigError
from medmeta.models.pretrained.backbone import PretrainedBackbone
from medmeta.models.pretrained.preprocessing import Preprocessing
from medmeta.models.pretrained.sources import describe, hub_download, local_weights
from medmeta.models.pretrained.spec import BackboneSpec

CONFIG = "config.json"
PROCESSOR = "preprocessor_config.json"
WEIGHTS = "model.safetensors"
SHARDED = "model.safetensors.index.json"
_FEATURE = "loading Hugging Face transformers backbones"


class PooledOutput(nn.Module):
    """A transformers vision model as ``(N, C, H, W)`` -> ``(N, D)``: its ``pooler_output``, flattened."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, D)``."""
        pooled = self.model(pixel_values=pixel_values).pooler_output
        if pooled is None:
            raise ValueError(
                f"{type(self.model).__name__} gives no pooler_output; it cannot serve as a backbone"
            )
        return pooled.flatten(1)  # (N, D); convolutional poolers give (N, D, 1, 1)


def load_hf(spec: BackboneSpec, *, weights: str | Path | None, pretrained: bool) -> PretrainedBackbone:
    """Load ``hf:ORG/REPO`` (see `load_backbone`)."""
    transformers = optional_import("transformers", _FEATURE)
    repo: str | None = None
    path: Path | None = None
    if weights is not None:
        path = local_weights(
            spec, weights, configs=(CONFIG, PROCESSOR), weights_names=(WEIGHTS, SHARDED), file_ok=False
        )
        folder = path
    elif pretrained:
        repo = spec.name
        paths = hub_download(
            spec, repo, [CONFIG, PROCESSOR, WEIGHTS], advertised=(CONFIG, PROCESSOR, WEIGHTS)
        )
        folder = paths[0].parent
    else:
        raise ConfigError(
            f"{spec}: pretrained=False is only supported for timm backbones; give weights or use timm:"
        )
    model = _model(transformers, spec, folder)
    processor = transformers.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    files = [*_weight_files(spec, folder), folder / CONFIG, folder / PROCESSOR]
    source = describe(
        spec, version=transformers.__version__, path=path, files=files, pretrained=True, repo=repo
    )
    return PretrainedBackbone(
        PooledOutput(model),
        out_features=_width(spec, model.config),
        preprocessing=Preprocessing.from_hf(processor),
        spec=spec,
        source=source,
    )


def _model(transformers: Any, spec: BackboneSpec, folder: Path) -> nn.Module:
    try:
        model: nn.Module = transformers.AutoModel.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, dtype=torch.float32
        )
    except (OSError, ValueError) as exc:  # unknown model_type, unreadable or mismatched weights
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{spec}: cannot load the model in {folder}: {first}") from exc
    if getattr(model, "main_input_name", "pixel_values") != "pixel_values":
        raise ConfigError(
            f"{spec}: {type(model).__name__} is not an image model (it takes {model.main_input_name})"
        )
    model.eval()
    return model


def _weight_files(spec: BackboneSpec, folder: Path) -> list[Path]:
    """The files transformers reads weights from: ``model.safetensors``, else the index and its shards."""
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    try:
        shards = sorted(set(json.loads((folder / SHARDED).read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{spec}: {folder / SHARDED} is not a safetensors index ({exc})") from exc
    return [folder / SHARDED, *(folder / name for name in shards)]


def _width(spec: BackboneSpec, config: Any) -> int:
    """Feature width from the config: ``hidden_size`` (ViTs, DINOv2) or the last of ``hidden_sizes`` (CNNs)."""
    width = getattr(config, "hidden_size", None)
    if width is None and getattr(config, "hidden_sizes", None):
        width = config.hidden_sizes[-1]
    if not isinstance(width, int):
        raise ConfigError(f"{spec}: its config has no hidden_size; cannot tell the feature width")
    return width
