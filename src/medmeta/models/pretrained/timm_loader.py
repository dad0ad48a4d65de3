"""timm backbones: ``timm.create_model(..., num_classes=0)``, its pooled pre-logits features.

Weights come from a folder in timm's hub layout (``config.json`` + ``model.safetensors``, loaded with timm's
``local-dir:`` source, so the folder's ``pretrained_cfg`` gives the preprocessing), a lone ``.safetensors``
file (timm's ``pretrained_cfg_overlay=dict(file=...)``; the preprocessing is the registry's for the spec's
tag), or the hub (the tag's ``model.safetensors``, then as a file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medmeta._optional import optional_import
from medmeta.errors import CheckpointError, ConfigError
from medmeta.models.pretrained.backbone import PretrainedBackbone
from medmeta.models.pretrained.preprocessing import Preprocessing
from medmeta.models.pretrained.sources import describe, hub_download, local_weights
from medmeta.models.pretrained.spec import BackboneSpec

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
_FEATURE = "loading timm backbones"


def load_timm(spec: BackboneSpec, *, weights: str | Path | None, pretrained: bool) -> PretrainedBackbone:
    """Load ``timm:ARCH[.TAG]`` (see `medmeta.models.pretrained.load_backbone`)."""
    timm = optional_import("timm", _FEATURE)
    if not timm.is_model(spec.arch):
        raise ConfigError(f"{spec}: timm has no architecture '{spec.arch}'; see timm.list_models()")
    path: Path | None = None
    repo: str | None = None
    if weights is not None:
        path = local_weights(spec, weights, configs=(CONFIG,), weights_names=(WEIGHTS,))
        if path.is_dir():
            _check_architecture(spec, path)
            model = timm.create_model(f"local-dir:{path}", pretrained=True, num_classes=0)
            files = [path / WEIGHTS, path / CONFIG]
        else:
            _registry_cfg(timm, spec)
            model = _create_from_file(timm, spec, path)
            files = [path]
    elif pretrained:
        registry_cfg = _registry_cfg(timm, spec) or {}
        repo, _, revision = (registry_cfg.get("hf_hub_id") or "").partition("@")
        if not repo:
            raise ConfigError(
                f"{spec}: timm has no hub weights for it; pass a .safetensors file or a folder as weights"
            )
        filename = _safetensors_name(registry_cfg.get("hf_hub_filename"))
        files = hub_download(spec, repo, [filename], advertised=(CONFIG, filename), revision=revision or None)
        model = _create_from_file(timm, spec, files[0])
    else:
        model = timm.create_model(spec.name, pretrained=False, num_classes=0)
        files = []
    model.eval()
    preprocessing = Preprocessing.from_timm(timm.data.resolve_model_data_config(model))
    out_features = int(getattr(model, "head_hidden_size", None) or model.num_features)
    source = describe(
        spec,
        version=timm.__version__,
        path=path,
        files=files,
        pretrained=pretrained or weights is not None,
        repo=repo,
    )
    return PretrainedBackbone(
        model, out_features=out_features, preprocessing=preprocessing, spec=spec, source=source
    )


def _registry_cfg(timm: Any, spec: BackboneSpec) -> dict[str, Any] | None:
    """timm's registered pretrained cfg for the spec's tag (its default tag when untagged), or None."""
    try:
        cfg = timm.models.get_pretrained_cfg(spec.name)
    except RuntimeError as exc:  # timm: "Invalid pretrained tag (x) for arch."
        raise ConfigError(
            f"{spec}: timm has no pretrained tag '{spec.tag}' for {spec.arch}; see timm.list_pretrained('{spec.arch}*')"
        ) from exc
    return cfg.to_dict() if cfg is not None else None


def _create_from_file(timm: Any, spec: BackboneSpec, path: Path) -> Any:
    try:
        return timm.create_model(
            spec.name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)}
        )
    except RuntimeError as exc:  # load_state_dict: missing / unexpected keys, shape mismatch
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{spec}: {path} does not fit architecture {spec.arch}: {first}") from exc


def _check_architecture(spec: BackboneSpec, folder: Path) -> None:
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{spec}: {folder / CONFIG} is not readable JSON ({exc})") from exc
    arch = config.get("architecture") if isinstance(config, dict) else None
    if arch != spec.arch:
        raise CheckpointError(
            f"{spec}: {folder / CONFIG} is for architecture '{arch}', not '{spec.arch}'; use timm:{arch} "
            "or the folder of the right model"
        )


def _safetensors_name(filename: str | None) -> str:
    """The safetensors file timm looks for in place of a registered pickle file name."""
    if not filename or filename == "pytorch_model.bin":
        return WEIGHTS
    if filename == "open_clip_pytorch_model.bin":
        return "open_clip_model.safetensors"
    return filename.rsplit(".", 1)[0] + ".safetensors"
