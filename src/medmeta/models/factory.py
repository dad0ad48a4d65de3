"""`make_backbone`: the backbone a run's `ModelConfig` names, fresh or rebuilt from a checkpoint's record.

medmeta's own backbones (``conv4``, ``resnet12``) are built by `medmeta.models.backbones.build_backbone`;
a library's network (``timm:``, ``open_clip:``, ``hf:``) is loaded by `medmeta.models.pretrained` and
wrapped in `PretrainedFeatures`, which applies the weights' preprocessing to the run's normalised images.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from medmeta.config import ModelConfig
from medmeta.data.transforms import Normalization
from medmeta.errors import CheckpointError, ConfigError
from medmeta.models.backbones import build_backbone


def make_backbone(
    model: ModelConfig,
    *,
    in_channels: int,
    spatial_dims: int,
    image_size: int,
    normalization: Normalization,
    record: dict[str, Any] | None = None,
) -> nn.Module:
    """The configured backbone.

    Args:
        model: the run's model section.
        in_channels: channels of the run's images.
        spatial_dims: 2 or 3.
        image_size: side of the run's images.
        normalization: the run's image normalisation (a library backbone undoes it before its own).
        record: a checkpoint's ``backbone_record`` (`PretrainedFeatures.record`): rebuild the architecture
            with the recorded preprocessing; the checkpoint's state then supplies every weight.

    Raises:
        ConfigError: a library backbone for 3-D data, unknown names, or weights that cannot be found.
        CheckpointError: a record that cannot be rebuilt.
    """
    if not model.from_library:
        return build_backbone(
            model.backbone, in_channels=in_channels, spatial_dims=spatial_dims, image_size=image_size
        )
    if spatial_dims != 2:
        raise ConfigError(
            f"backbone {model.backbone} takes 2-D images, but this run's images are 3-D: use conv4 or resnet12"
        )
    from medmeta.models.pretrained import Preprocessing, load_backbone
    from medmeta.models.pretrained.features import PretrainedFeatures
    from medmeta.models.pretrained.registry import resolve_weights

    if record is None:
        weights, imported = resolve_weights(model.weights) if model.weights else (None, None)
        net = load_backbone(
            model.backbone, weights=weights, pretrained=model.pretrained or weights is not None
        )
        if imported is not None:
            net.source["imported_as"] = imported.name
    else:
        net = _rebuild(model, record)
        try:
            net.preprocessing = Preprocessing.from_dict(record["preprocessing"])
            net.source = dict(record["source"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint's backbone record is unusable ({exc}): retrain") from None
    return PretrainedFeatures(net, normalization.mean, normalization.std)


def _rebuild(model: ModelConfig, record: dict[str, Any]) -> Any:
    """The architecture behind a record: timm builds it by name; open_clip and Hugging Face networks need
    their configuration, which their weights folder holds."""
    from medmeta.models.pretrained import load_backbone

    if model.backbone.startswith("timm:"):
        return load_backbone(model.backbone, pretrained=False)
    if model.weights is None:
        raise CheckpointError(
            f"rebuilding {model.backbone} needs its architecture, which its weights folder describes: "
            "the run downloaded them; download them again and pass --weights FOLDER"
        )
    from medmeta.models.pretrained.registry import resolve_weights

    weights, _ = resolve_weights(model.weights)
    return load_backbone(model.backbone, weights=weights)
