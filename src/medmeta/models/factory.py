"""`make_backbone`: the backbone a run's `ModelConfig` names, fresh or rebuilt from a checkpoint's record.

medmeta's own backbones (``conv4``, ``resnet12``) are built by `medmeta.models.backbones.build_backbone`;
a library's network (``timm:``, ``open_clip:``, ``hf:``) is loaded by `medmeta.models.pretrained` and
wrapped in `PretrainedFeatures`, which applies the weights' preprocessing to the run's normalised images.

``conv4``, ``resnet12`` and ``timm:`` backbones may start from a ``medmeta pretrain`` checkpoint
(``model.weights: RUN/best.json``): the caller reads it (`medmeta.train.checkpoint.load_checkpoint`
verifies its checksums; this layer may not import it) and passes it as a `PretrainedStart`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medmeta.config import ModelConfig
from medmeta.data.transforms import Normalization
from medmeta.errors import CheckpointError, ConfigError
from medmeta.models.backbones import build_backbone

#: the kind of checkpoint ``medmeta pretrain`` writes
PRETRAIN_KIND = "pretrain"


def names_pretrain_checkpoint(weights: str | None) -> bool:
    """True when ``model.weights`` names a medmeta checkpoint (a ``.json`` file), not a library's weights."""
    return weights is not None and weights.endswith(".json")


@dataclass(frozen=True)
class PretrainedStart:
    """A ``medmeta pretrain`` checkpoint, read and verified by the caller.

    Attributes:
        path: where it was read from (named in errors).
        state: its weights; the backbone's are under ``backbone.``.
        meta: its JSON description (``kind``, ``backbone``, ``input``, ``backbone_record``...).
    """

    path: str
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]


def make_backbone(
    model: ModelConfig,
    *,
    in_channels: int,
    spatial_dims: int,
    image_size: int,
    normalization: Normalization,
    record: dict[str, Any] | None = None,
    start: PretrainedStart | None = None,
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
        start: the pretrain checkpoint ``model.weights`` names, for a fresh backbone to start from (None
            when rebuilding a trained checkpoint, whose state supplies every weight).

    Raises:
        ConfigError: a library backbone for 3-D data, unknown names, or weights that cannot be found.
        CheckpointError: a record that cannot be rebuilt, or a `start` of another kind, backbone or
            channel count.
    """
    if start is not None:
        check_pretrained_start(model, start, in_channels)
    if not model.from_library:
        if model.weights is not None and not names_pretrain_checkpoint(model.weights):
            raise ConfigError(
                f"weights '{model.weights}': {model.backbone} starts from scratch or from a `medmeta pretrain` "
                "checkpoint (RUN/best.json); library weights go with timm:/open_clip:/hf: backbones"
            )
        net = build_backbone(
            model.backbone, in_channels=in_channels, spatial_dims=spatial_dims, image_size=image_size
        )
        return net if start is None else _load_start(net, start)
    if spatial_dims != 2:
        raise ConfigError(
            f"backbone {model.backbone} takes 2-D images, but this run's images are 3-D: use conv4 or resnet12"
        )
    from medmeta.models.pretrained import Preprocessing, load_backbone
    from medmeta.models.pretrained.features import PretrainedFeatures
    from medmeta.models.pretrained.registry import resolve_weights

    if start is not None:
        return _load_start(_library_from_start(model, start, normalization), start)
    if names_pretrain_checkpoint(model.weights) and record is None:
        raise ConfigError(
            f"weights {model.weights} is a medmeta checkpoint: {model.backbone} starts from one only through "
            "the pipeline (medmeta train / pretrain), which reads and verifies it"
        )
    if record is None:
        weights, imported = resolve_weights(model.weights) if model.weights else (None, None)
        net = load_backbone(
            model.backbone, weights=weights, pretrained=model.pretrained or weights is not None
        )
        if imported is not None:
            net.source["imported_as"] = imported.name
        if model.input_size is not None:
            net.preprocessing = at_input_size(net, model.backbone, model.input_size)
    else:
        net = _rebuild(model, record)
        try:
            net.preprocessing = Preprocessing.from_dict(record["preprocessing"])
            net.source = dict(record["source"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint's backbone record is unusable ({exc}): retrain") from None
    return PretrainedFeatures(net, normalization.mean, normalization.std)


def at_input_size(net: Any, spec: str, size: int) -> Any:
    """The network's `Preprocessing` moved to a `size` x `size` input, keeping the weights' crop ratio.

    Raises:
        ConfigError: the network cannot run at that size (a ViT's fixed position embedding).
    """
    import dataclasses

    prep = net.preprocessing
    resize = max(size, round(size * prep.resize / prep.size))
    moved = dataclasses.replace(prep, size=size, resize=resize)
    was_training = net.training
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, prep.in_channels, size, size))
    except (RuntimeError, AssertionError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"backbone {spec} cannot run at input_size {size} ({first}): use its own size "
            f"{prep.size} or a convolutional network"
        ) from None
    finally:
        net.train(was_training)
    return moved


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


def check_pretrained_start(model: ModelConfig, start: PretrainedStart, in_channels: int) -> None:
    """Refuse a pretrain checkpoint that cannot start this run's backbone.

    Raises:
        CheckpointError: not a pretrain checkpoint, another backbone, or another channel count; or a
            backbone other than conv4, resnet12 and timm.
    """
    kind = start.meta.get("kind")
    if kind != PRETRAIN_KIND:
        raise CheckpointError(
            f"--weights {start.path} is a {kind or 'training'} checkpoint, not a `medmeta pretrain` one: give "
            "RUN/best.json of a pretrain run"
        )
    if model.backbone.startswith(("open_clip:", "hf:")):
        raise CheckpointError(
            f"--weights {start.path}: pretrain checkpoints start conv4, resnet12 and timm: backbones, not "
            f"{model.backbone}"
        )
    saved = start.meta.get("backbone")
    if saved != model.backbone:
        raise CheckpointError(
            f"--weights {start.path} holds a pretrained {saved}, but this run builds {model.backbone}: pass "
            f"--backbone {saved} or another checkpoint"
        )
    channels = (start.meta.get("input") or {}).get("channels")
    if channels != in_channels:
        raise CheckpointError(
            f"--weights {start.path} was pretrained on {channels}-channel images, this run's have {in_channels}: "
            f"pass --channels {channels} or another checkpoint"
        )


def _library_from_start(
    model: ModelConfig, start: PretrainedStart, normalization: Normalization
) -> nn.Module:
    """A timm backbone's architecture and the preprocessing it was pretrained with, for the weights to fill."""
    from medmeta.models.pretrained import Preprocessing
    from medmeta.models.pretrained.features import PretrainedFeatures

    record = start.meta.get("backbone_record")
    if not isinstance(record, dict):
        raise CheckpointError(
            f"--weights {start.path} lacks its backbone record: it was not written by pretrain"
        )
    net = _rebuild(model, record)
    try:
        net.preprocessing = Preprocessing.from_dict(record["preprocessing"])
        net.source = {**dict(record["source"]), "pretrain_checkpoint": start.path}
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"--weights {start.path}: its backbone record is unusable ({exc})") from None
    return PretrainedFeatures(net, normalization.mean, normalization.std)


def _load_start(backbone: nn.Module, start: PretrainedStart) -> nn.Module:
    """`backbone` holding the ``backbone.*`` weights of `start`."""
    state = {k.removeprefix("backbone."): v for k, v in start.state.items() if k.startswith("backbone.")}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(
            f"--weights {start.path} does not fit this backbone ({detail}): pretrain it with this image setup"
        ) from None
    return backbone
