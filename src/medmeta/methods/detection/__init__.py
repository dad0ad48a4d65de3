"""Few-shot detectors on a torchvision Faster R-CNN: TFA (fine-tune the last layer) and prototypes.

`DET_METHODS` is the registry by name; `medmeta.methods.detection.base.FewShotDetector` is their interface
and `medmeta.tasks.detection.DetEpisode` their task (targets: boxes). They need ``medmeta[detection]``.
"""

from __future__ import annotations

from medmeta.methods.detection.base import DetPredictor, FewShotDetector
from medmeta.methods.detection.prototype import ProtoDet
from medmeta.methods.detection.tfa import TFA

DET_METHODS: dict[str, type[FewShotDetector]] = {
    "tfa": TFA,
    "proto": ProtoDet,
}

__all__ = ["DET_METHODS", "DetPredictor", "FewShotDetector"]
