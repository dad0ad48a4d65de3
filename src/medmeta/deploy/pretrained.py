"""A model from a pretrained backbone alone, with no meta-training: the practitioner's shortest path.

``medmeta adapt --backbone timm:resnet18.a1_in1k --weights NAME --support DIR`` builds a method around the
library backbone (frozen features and prototypes by default; a logistic-regression head or fine-tuning as
options) and adapts it like a meta-trained checkpoint. The adapted checkpoint stores the backbone's weights,
spec, preprocessing and source, so it loads and predicts like any other.
"""

from __future__ import annotations

from typing import Any

import torch

from medmeta import __version__
from medmeta.config import ModelConfig, make_config
from medmeta.deploy.adapted import TrainedModel
from medmeta.errors import ConfigError
from medmeta.models.factory import make_backbone, names_pretrain_checkpoint
from medmeta.models.pretrained.features import PretrainedFeatures
from medmeta.pipeline import backbone_record, build_method_from_config, default_normalization
from medmeta.pipeline.checks import check_method_config
from medmeta.pipeline.classification import read_pretrained_start

#: methods whose adaptation needs no meta-learned parameter beyond the backbone
UNTRAINED_METHODS = ("protonet", "simpleshot", "linear_probe", "finetune")


def pretrained_model(
    model: ModelConfig, *, method: str = "protonet", image_size: int | None = None, channels: int = 3
) -> TrainedModel:
    """A library backbone behind a method that adapts without meta-training, ready for `adapt`.

    Args:
        model: the backbone (``timm:``, ``open_clip:`` or ``hf:`` spec) and its weights.
        method: ``protonet`` (prototypes of frozen features, the default), ``simpleshot``, ``linear_probe``
            (logistic regression on frozen features) or ``finetune`` (fine-tunes the head on the support).
        image_size: side support and query images are read at (default: the weights' own ``resize``).
        channels: 1 or 3; the backbone maps them to its own channels.

    Raises:
        ConfigError: not a library backbone, a method that needs meta-training, or a bad size.
    """
    if not (model.from_library or model.raw_pixels or names_pretrain_checkpoint(model.weights)):
        raise ConfigError(
            f"--backbone {model.backbone} has no pretrained weights: give a library backbone "
            "(timm:, open_clip:, hf:), a medmeta pretrain checkpoint with --weights RUN/best.json, the "
            "raw-pixel baseline (pixels) or a meta-trained checkpoint with --model"
        )
    if method not in UNTRAINED_METHODS:
        raise ConfigError(
            f"method '{method}' needs meta-training before it can adapt; without a checkpoint use one of "
            f"{', '.join(UNTRAINED_METHODS)}"
        )
    norm = default_normalization(channels)
    start = read_pretrained_start(model.weights) if names_pretrain_checkpoint(model.weights) else None
    size = image_size
    if size is None and start is not None:  # the size the backbone was pretrained at
        size = int(start.meta.get("input", {}).get("image_size", 0)) or None
    if size is None and not model.from_library:
        raise ConfigError(f"--backbone {model.backbone}: give --image-size (the side images are read at)")
    if size is None:  # the weights' own input side: one resize, the one the weights were trained with
        net = make_backbone(model, in_channels=channels, spatial_dims=2, image_size=64, normalization=norm)
        assert isinstance(net, PretrainedFeatures)  # a library backbone always is
        size = int(net.preprocessing.resize)
    data = {"image_size": size, "channels": channels}
    cfg = check_method_config(
        make_config({"model": model.model_dump(mode="json"), "method": {"name": method}, "data": data})
    )
    torch.manual_seed(cfg.train.seed)
    built = build_method_from_config(cfg, channels=channels, spatial_dims=2, start=start).eval()
    record = backbone_record(built)
    meta: dict[str, Any] = {
        "method": method,
        "backbone": model.backbone,
        "config": cfg.model_dump(mode="json"),
        "train_domains": [],
        "train_classes": {},
        "image_shape": [channels, size, size],
        "spatial_dims": 2,
        "input": {"channels": channels, "image_size": size},
        "normalization": {"mean": list(norm.mean), "std": list(norm.std)},
        "backbone_record": record,
        "meta_trained": False,
        "torch_version": torch.__version__,
        "medmeta_version": __version__,
    }
    sha = (record or {}).get("source", {}).get("sha256", {})
    source = {"backbone": model.backbone, "sha256": ",".join(f"{k}:{v}" for k, v in sorted(sha.items()))}
    return TrainedModel(built, cfg, meta, norm, source)
