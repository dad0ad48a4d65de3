"""Distillation of adapted models into a small student (`medmeta.deploy.distill`): the settings that change
the student, stored in its checkpoint."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from medmeta.config._base import _Frozen, _validated


class DistillConfig(_Frozen):
    """How a student learns from its teachers.

    Attributes:
        temperature: softening temperature ``T`` of teacher and student distributions in the KL term
            (Hinton et al. 2015; the term is scaled by ``T**2``).
        ce_weight: weight of the cross-entropy on the labelled support beside the KL term.
        steps: optimiser steps (Adam, cosine-annealed learning rate).
        batch_size: teacher-labelled images per step (the whole support set is added to every step).
        lr: Adam learning rate.
        views: views of each unlabelled image the teacher labels once (the image itself plus ``views - 1``
            light seeded augmentations: crop, left-right flip, small rotation, brightness and contrast).
        max_images: most unlabelled images used (a seeded choice when there are more).
        seed: seeds the student's initial weights, the choice of images, the views and the batches.
        latency_runs: timed single-image runs per model for the latency report (median reported).
    """

    temperature: float = Field(4.0, gt=0.0, le=100.0)
    ce_weight: float = Field(1.0, ge=0.0)
    steps: int = Field(300, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    views: int = Field(2, ge=1, le=16)
    max_images: int = Field(2000, ge=1)
    seed: int = Field(0, ge=0)
    latency_runs: int = Field(50, ge=1)


def make_distill_config(data: dict[str, Any], source: str = "distillation settings") -> DistillConfig:
    """Validate a plain dict into a `DistillConfig`.

    Raises:
        ConfigError: one line naming every bad field, its value and the rule.
    """
    return _validated(DistillConfig, data, source)
