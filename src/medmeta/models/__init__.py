"""Backbones (feature extractors) and heads."""

from __future__ import annotations

from medmeta.models.backbones import BACKBONES, Conv4, ResNet12, build_backbone

__all__ = ["BACKBONES", "Conv4", "ResNet12", "build_backbone"]
