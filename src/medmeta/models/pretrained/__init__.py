"""Pretrained image backbones from timm, open_clip and Hugging Face transformers, with their preprocessing.

``load_backbone("timm:resnet18.a1_in1k", weights=FOLDER)`` -> a `PretrainedBackbone` mapping
``(N, in_channels, size, size)`` to ``(N, out_features)``; ``backbone.preprocessing(images)`` turns raw
``(N, C, H, W)`` images into that input. See ``docs/pretrained.md``.
"""

from __future__ import annotations

from medmeta.models.pretrained.backbone import PretrainedBackbone
from medmeta.models.pretrained.hashing import sha256_file
from medmeta.models.pretrained.loader import LOADERS, load_backbone
from medmeta.models.pretrained.preprocessing import Preprocessing
from medmeta.models.pretrained.spec import BackboneSpec

__all__ = ["LOADERS", "BackboneSpec", "Preprocessing", "PretrainedBackbone", "load_backbone", "sha256_file"]
