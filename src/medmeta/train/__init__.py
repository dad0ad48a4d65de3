"""Generic meta-training loop and safe checkpoints."""

from __future__ import annotations

from medmeta.train.checkpoint import load_checkpoint, save_checkpoint
from medmeta.train.loop import FitResult, fit, step

__all__ = ["FitResult", "fit", "load_checkpoint", "save_checkpoint", "step"]
