"""open_clip backbones: the image tower, whose output is ``encode_image`` (not normalised, as open_clip's).

Only the vision tower is built (open_clip's own ``_build_vision_tower`` from the model config) and only the
``visual.*`` tensors are loaded: the text tower is not needed for image features, and building a Hugging Face
text tower (BiomedCLIP's PubMedBERT) would fetch its config from the hub, which an offline machine cannot.

The model config and preprocessing come from ``open_clip_config.json`` (``model_cfg``, ``preprocess_cfg``) in
the weights' folder, or from open_clip's registry for a built-in ``ARCH.TAG``. open_clip itself falls back to
OpenAI mean/std when a local config has no ``preprocess_cfg``; here that is refused.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import nn

from medmeta._optional import optional_import
from medmeta.errors import CheckpointError, ConfigError
from medmeta.models.pretrained.backbone import PretrainedBackbone
from medmeta.models.pretrained.preprocessing import Preprocessing
from medmeta.models.pretrained.sources import describe, hub_download, local_weights
from medmeta.models.pretrained.spec import BackboneSpec

CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"
_FEATURE = "loading open_clip backbones"


def load_open_clip(spec: BackboneSpec, *, weights: str | Path | None, pretrained: bool) -> PretrainedBackbone:
    """Load ``open_clip:ARCH.TAG`` or ``open_clip:hf-hub:ORG/REPO`` (see `load_backbone`)."""
    open_clip = optional_import("open_clip", _FEATURE)
    if not pretrained and weights is None:
        raise ConfigError(
            f"{spec}: pretrained=False is only supported for timm backbones; give weights or use timm:"
        )
    path: Path | None = None
    repo: str | None = None
    config_file: Path | None = None
    if weights is not None:
        path = local_weights(spec, weights, configs=(CONFIG,), weights_names=(WEIGHTS,))
        weights_file = path / WEIGHTS if path.is_dir() else path
        if (weights_file.parent / CONFIG).is_file():
            config_file = weights_file.parent / CONFIG
        elif spec.tag is None:
            raise ConfigError(
                f"{spec}: {weights_file} comes without {CONFIG} beside it, so its preprocessing (mean, std, size) "
                f"is unknown; put the {CONFIG} of its release beside it, or name a built-in open_clip:ARCH.TAG"
            )
    elif spec.name.startswith("hf-hub:"):
        repo = spec.name.removeprefix("hf-hub:")
        config_file, weights_file = hub_download(spec, repo, [CONFIG, WEIGHTS], advertised=(CONFIG, WEIGHTS))
    else:
        repo, filename = _tag_hub_file(open_clip, spec)
        (weights_file,) = hub_download(spec, repo, [filename], advertised=(filename,))
    if config_file is not None:
        model_cfg, preprocess_cfg = _read_config(spec, config_file)
        files = [weights_file, config_file]
    else:
        model_cfg, preprocess_cfg = _registry_config(open_clip, spec)
        files = [weights_file]
    visual = _vision_tower(open_clip, spec, model_cfg)
    _load_visual(spec, visual, weights_file)
    visual.eval()
    image_size = getattr(visual, "image_size", None) or model_cfg["vision_cfg"].get("image_size")
    merged = open_clip.transform.merge_preprocess_dict(preprocess_cfg, {"size": image_size})
    source = describe(spec, version=open_clip.__version__, path=path, files=files, pretrained=True, repo=repo)
    return PretrainedBackbone(
        visual,
        out_features=int(model_cfg["embed_dim"]),
        preprocessing=Preprocessing.from_open_clip(merged),
        spec=spec,
        source=source,
    )


def _read_config(spec: BackboneSpec, config_file: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{spec}: {config_file} is not readable JSON ({exc})") from exc
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise CheckpointError(
            f"{spec}: {config_file} has no model_cfg; use the {CONFIG} of the weights' release"
        )
    preprocess = config.get("preprocess_cfg")
    if not isinstance(preprocess, dict) or preprocess.get("mean") is None or preprocess.get("std") is None:
        raise CheckpointError(
            f"{spec}: {config_file} has no preprocess_cfg mean and std (open_clip would silently use its "
            "defaults); use the config of the weights' release or add its preprocess_cfg"
        )
    return config["model_cfg"], preprocess


def _registry_config(open_clip: Any, spec: BackboneSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """Built-in model config (with the tag's activation) and the tag's preprocessing (open_clip's defaults
    under the tag's values)."""
    model_cfg = open_clip.get_model_config(spec.arch)
    tag_cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag or "")
    if model_cfg is None or not tag_cfg:
        raise ConfigError(
            f"{spec}: open_clip has no built-in {spec.arch} with tag '{spec.tag}'; see open_clip.list_pretrained()"
        )
    if tag_cfg.get("quick_gelu") and not model_cfg.get("quick_gelu"):
        # the weights were trained with QuickGELU (OpenAI's); open_clip only warns and builds nn.GELU
        model_cfg = {**model_cfg, "quick_gelu": True}
    base = open_clip.transform.PreprocessCfg()
    return model_cfg, open_clip.transform.merge_preprocess_dict(base, tag_cfg)


def _tag_hub_file(open_clip: Any, spec: BackboneSpec) -> tuple[str, str]:
    """(repository, safetensors file name) of a built-in ``ARCH.TAG`` on the hub."""
    if spec.tag is None:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(spec.arch)) or "none"
        raise ConfigError(f"{spec}: name its pretrained tag as open_clip:{spec.arch}.TAG (tags: {tags})")
    _registry_config(open_clip, spec)
    hub = open_clip.get_pretrained_cfg(spec.arch, spec.tag).get("hf_hub", "")
    if not hub:
        raise ConfigError(
            f"{spec}: its weights are not on the hub as safetensors; pass a local folder as weights"
        )
    org, name, *rest = hub.strip("/").split("/")
    filename = rest[0] if rest else "open_clip_pytorch_model.bin"
    if filename.endswith(".safetensors"):
        return f"{org}/{name}", filename
    if filename == "open_clip_pytorch_model.bin":
        return f"{org}/{name}", WEIGHTS
    return f"{org}/{name}", filename.rsplit(".", 1)[0] + ".safetensors"


def _vision_tower(open_clip: Any, spec: BackboneSpec, model_cfg: dict[str, Any]) -> nn.Module:
    if "multimodal_cfg" in model_cfg:
        raise ConfigError(f"{spec}: CoCa models are not supported as backbones; use a CLIP model")
    vision_cfg = copy.deepcopy(model_cfg["vision_cfg"])
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False  # the CLIP checkpoint holds the tower's weights
    tower: nn.Module = open_clip.model._build_vision_tower(
        model_cfg["embed_dim"], vision_cfg, quick_gelu=model_cfg.get("quick_gelu", False)
    )
    return tower


def _load_visual(spec: BackboneSpec, visual: nn.Module, weights_file: Path) -> None:
    try:
        state = safetensors.torch.load_file(str(weights_file), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise CheckpointError(f"{spec}: {weights_file} is not a readable safetensors file ({exc})") from exc
    prefix = "module.visual." if any(k.startswith("module.") for k in state) else "visual."
    visual_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not visual_state:
        raise CheckpointError(
            f"{spec}: {weights_file} has no visual.* tensors; it is not an open_clip checkpoint"
        )
    try:
        result = visual.load_state_dict(visual_state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{spec}: {weights_file} does not fit its model_cfg: {first}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{spec}: {weights_file} does not fit its model_cfg: {len(result.missing_keys)} missing "
            f"(e.g. {result.missing_keys[:1]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:1]})"
        )
