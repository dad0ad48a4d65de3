"""Distil an adapted model, or an ensemble of them, into a small student that deploys like any adapted model.

The teachers are `medmeta adapt` checkpoints with one set of classes and one input size; an ensemble's
distribution is the average of its members' calibrated probabilities (each member's stored temperature).
The student is a fresh backbone (``conv4``, ``resnet12``, a ``timm:`` network...) behind ProtoNet, so its
head is the (cosine) prototypes of the teacher's support set in the student's feature space. It learns from the
teacher's distribution on unlabelled images (`medmeta.train.distill`, Hinton et al. 2015, arXiv:1503.02531)
and the support labels, then is adapted to that support set and saved as an ordinary adapted checkpoint:
``predict``, ``score``, ``export`` and ``serve`` take it unchanged. Its temperature is fitted so its
probabilities are as confident as the teacher's on the unlabelled images.

Example:
    >>> # teachers = load_teachers(["adapted_resnet12.json"])
    >>> # student = build_student("conv4", channels=3, image_size=64)
    >>> # result = distill(teachers, student, unlabelled_uint8, DistillConfig(steps=300))
    >>> # save_adapted(result.student, "out/student")
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from medmeta import __version__
from medmeta.config import ModelConfig, TrainConfig, describe_validation_error, make_config
from medmeta.config.distill import DistillConfig
from medmeta.data.datasets import ImageDataset
from medmeta.deploy.adapted import AdaptedModel, TrainedModel, adapt_support, load_adapted
from medmeta.errors import CheckpointError, ConfigError
from medmeta.eval.ensemble import mix_log_probs
from medmeta.models.factory import names_pretrain_checkpoint
from medmeta.pipeline import backbone_record, build_method_from_config, default_normalization
from medmeta.pipeline.checks import check_method_config
from medmeta.pipeline.classification import read_pretrained_start
from medmeta.train.checkpoint import checkpoint_json
from medmeta.train.distill import DistillBatches, fit_temperature_to_teacher, make_views
from medmeta.train.loop import ProgressHook, fit

#: the student's rule: its head is the prototypes of the support set in its own feature space, compared
#: by cosine with a learnt scale. A fresh backbone's squared-Euclidean logits start hundreds apart, so the
#: student would spend its steps shrinking its features before it could match a softened distribution
#: (measured in docs/distill.md).
STUDENT_METHOD = "protonet"
STUDENT_OPTIONS: dict[str, Any] = {"distance": "cosine", "scale": 10.0, "learn_scale": True}


@dataclass(frozen=True)
class Teachers:
    """One adapted model, or an ensemble averaging its members' calibrated probabilities.

    Attributes:
        models: the adapted teachers (same classes in the same order, same input size).
        files: their checkpoint paths, as given.
    """

    models: tuple[AdaptedModel, ...]
    files: tuple[str, ...]

    @property
    def first(self) -> AdaptedModel:
        return self.models[0]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.first.class_names

    def log_probs(self, images: Tensor) -> Tensor:
        """uint8 ``(N, C, H, W)`` -> ``(N, n_way)`` log of the members' averaged calibrated probabilities."""
        logits = [m.logits(images) for m in self.models]  # each (N, n_way)
        temperatures = torch.tensor([m.temperature for m in self.models])  # (M,)
        weights = torch.full((len(self.models),), 1.0 / len(self.models))  # (M,)
        return mix_log_probs(logits, temperatures, weights)

    def describe(self) -> list[dict[str, Any]]:
        """Each teacher's file, method, backbone, temperature and weights checksum (for the student's record)."""
        return [
            {
                "file": f,
                "method": m.base.meta.get("method"),
                "backbone": m.base.config.model.backbone,
                "temperature": m.temperature,
                "sha256": m.base.source.get("sha256", ""),
            }
            for f, m in zip(self.files, self.models, strict=True)
        ]


def load_teachers(paths: Sequence[str | Path]) -> Teachers:
    """Load adapted checkpoints to distil from.

    Raises:
        ConfigError: no teacher given.
        CheckpointError: a missing file, a checkpoint that is not an adapted one, or teachers with other
            classes or another input size than the first.
    """
    if not paths:
        raise ConfigError(
            "give at least one --teacher ADAPTED.json (an adapted checkpoint of `medmeta adapt`)"
        )
    models = []
    for p in paths:
        json_path = checkpoint_json(p)
        if not json_path.is_file():
            raise CheckpointError(
                f"--teacher {p} not found: give an adapted checkpoint (the OUT.json that `medmeta adapt` writes)"
            )
        models.append(load_adapted(json_path))
    first = models[0]
    for p, m in zip(paths[1:], models[1:], strict=True):
        if m.class_names != first.class_names:
            raise CheckpointError(
                f"--teacher {p} predicts {', '.join(m.class_names)} but {paths[0]} predicts "
                f"{', '.join(first.class_names)}: ensemble teachers adapted to the same classes, in one order"
            )
        shape, first_shape = (
            (m.base.channels, m.base.image_size),
            (first.base.channels, first.base.image_size),
        )
        if shape != first_shape:
            raise CheckpointError(
                f"--teacher {p} reads {shape[0]}-channel images at {shape[1]} px but {paths[0]} reads "
                f"{first_shape[0]}-channel images at {first_shape[1]} px: adapt the teachers at one input size"
            )
    return Teachers(tuple(models), tuple(str(p) for p in paths))


def build_student(
    spec: str, *, channels: int, image_size: int, weights: str | None = None, seed: int = 0
) -> TrainedModel:
    """A fresh student: backbone `spec` (from `weights` when given) behind ProtoNet, seeded.

    Raises:
        ConfigError: an unknown spec, the raw-pixel baseline (nothing to learn), or unusable weights.
    """
    try:
        model = ModelConfig(backbone=spec, weights=weights, pretrained=weights is not None)
    except ValueError as exc:  # pydantic's ValidationError
        raise ConfigError(f"--student: {describe_validation_error(exc)}") from None
    if model.raw_pixels:
        raise ConfigError(
            f"--student {spec} is the raw-pixel baseline: it has no weights to learn; give conv4, resnet12 or "
            "a timm: backbone"
        )
    data = {"image_size": image_size, "channels": channels}
    cfg = check_method_config(
        make_config(
            {
                "model": model.model_dump(mode="json"),
                "method": {"name": STUDENT_METHOD, "options": STUDENT_OPTIONS},
                "data": data,
            }
        )
    )
    start = read_pretrained_start(weights) if names_pretrain_checkpoint(weights) else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        method = build_method_from_config(cfg, channels=channels, spatial_dims=2, start=start).eval()
    norm = default_normalization(channels)
    meta: dict[str, Any] = {
        "method": STUDENT_METHOD,
        "backbone": spec,
        "config": cfg.model_dump(mode="json"),
        "train_domains": [],
        "train_classes": {},
        "image_shape": [channels, image_size, image_size],
        "spatial_dims": 2,
        "input": {"channels": channels, "image_size": image_size},
        "normalization": {"mean": list(norm.mean), "std": list(norm.std)},
        "backbone_record": backbone_record(method),
        "meta_trained": False,
        "torch_version": torch.__version__,
        "medmeta_version": __version__,
    }
    return TrainedModel(method, cfg, meta, norm, {"backbone": spec, "sha256": ""})


@dataclass
class Distilled:
    """A distilled student and how it was made.

    Attributes:
        student: the adapted student (the teacher's support set, temperature fitted to the teacher).
        history: per-epoch training records of `medmeta.train.loop.fit` (one epoch of ``cfg.steps``).
        images: unlabelled images used; views: teacher-labelled views (``images * cfg.views``).
        seconds: labelling, training and adapting time.
    """

    student: AdaptedModel
    history: list[dict[str, float]] = field(default_factory=list)
    images: int = 0
    views: int = 0
    seconds: float = 0.0


def teacher_log_probs(
    teachers: Teachers, images: Tensor, progress: ProgressHook | None = None, chunk: int = 256
) -> Tensor:
    """`Teachers.log_probs` chunk by chunk (with progress): uint8 ``(N, C, H, W)`` -> ``(N, n_way)``."""
    if progress is not None:
        progress.start("teacher labels the views", images.shape[0])
    parts = []
    try:
        for start in range(0, images.shape[0], chunk):
            parts.append(teachers.log_probs(images[start : start + chunk]))
            if progress is not None:
                progress.advance(min(chunk, images.shape[0] - start))
    finally:
        if progress is not None:
            progress.stop()
    return torch.cat(parts)  # (N, n_way)


def distill(
    teachers: Teachers,
    student: TrainedModel,
    unlabelled: np.ndarray,
    cfg: DistillConfig,
    *,
    progress: ProgressHook | None = None,
) -> Distilled:
    """Train `student` on the teacher's distribution over `unlabelled` and the first teacher's support set.

    Args:
        teachers: the adapted teacher(s).
        student: a fresh student (`build_student`) at the teachers' input size and channels; trained in place.
        unlabelled: uint8 ``(N, C, H, W)`` at that size.
        cfg: temperature, loss weight, steps, batch size, learning rate, views, seed.
        progress: progress receiver.

    Returns:
        The adapted student and its training record.

    Raises:
        CheckpointError: a student whose input differs from the teachers'.
        TrainingError: the loss became NaN or inf.
    """
    first = teachers.first
    if (student.channels, student.image_size) != (first.base.channels, first.base.image_size):
        raise CheckpointError(
            f"the student takes {student.channels}x{student.image_size} px images, the teachers "
            f"{first.base.channels}x{first.base.image_size}: build it at the teachers' input size"
        )
    start = time.perf_counter()
    images = torch.from_numpy(np.ascontiguousarray(unlabelled))  # (N, C, H, W) uint8
    views = make_views(images, cfg.views, cfg.seed)  # (views * N, C, H, W)
    teacher = teacher_log_probs(teachers, views, progress)  # (views * N, n_way)
    source = DistillBatches(
        support=first.support_images,
        support_labels=first.support_labels,
        n_way=first.n_way,
        views=views,
        teacher_logits=teacher,
        prepare=student.normalization,
        steps_per_epoch=cfg.steps,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        temperature=cfg.temperature,
        ce_weight=cfg.ce_weight,
    )
    train = TrainConfig(
        epochs=1, episodes_per_epoch=cfg.steps, lr=cfg.lr, lr_schedule="cosine", val_episodes=0, device="cpu"
    )
    result = fit(student.method, source, train, progress=progress, save_state=False, save_last=False)
    student.method.eval()
    support = ImageDataset(
        first.support_images.numpy(), first.support_labels.numpy(), first.class_names, domain="support"
    )
    adapted = adapt_support(student, support, files=first.support_files)
    n = images.shape[0]
    adapted.temperature = fit_temperature_to_teacher(adapted.logits(images), teacher[:n])  # view 0 = images
    adapted.base.meta["distilled_from"] = {
        "teachers": teachers.describe(),
        "settings": cfg.model_dump(mode="json"),
        "unlabelled_images": n,
        "loss": "T^2 KL(teacher_T || student_T) + ce_weight CE(support); Hinton et al. 2015, arXiv:1503.02531",
    }
    return Distilled(adapted, result.history, n, int(views.shape[0]), time.perf_counter() - start)
