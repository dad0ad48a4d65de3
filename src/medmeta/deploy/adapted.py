"""A meta-trained model adapted to one support set, saved and loaded as a safe checkpoint.

An adapted checkpoint is an ordinary medmeta checkpoint (safetensors + JSON, SHA-256 verified, never
unpickled) whose JSON has ``"kind": "adapted"``. It stores the meta-trained weights under their usual
names, and under ``adapted.*`` the support set at the model's input size (uint8 pixels and labels) plus
the adapted predictor's logits on that support set. Loading rebuilds the predictor by running the
method's own ``adapt`` on the stored support (seeded, so methods with random initialisation repeat
exactly) and checks the logits against the stored ones: one format serves all 14 methods (prototypes,
support embeddings, MAML's adapted parameters and fine-tuned heads are all recomputed in milliseconds to
seconds), and the stored support images are what the nearest-support explanations show.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from medmeta import __version__
from medmeta.config import RunConfig, make_config
from medmeta.data.datasets import ImageDataset
from medmeta.data.transforms import Normalization
from medmeta.errors import CheckpointError, ConfigError
from medmeta.methods.base import FewShotMethod, Predictor
from medmeta.methods.functional import embed
from medmeta.pipeline import build_method_from_config, normalization_from_meta, record_from_meta
from medmeta.pipeline.checks import check_method_config
from medmeta.tasks.episode import Support
from medmeta.train.checkpoint import checkpoint_json, load_checkpoint, load_state_strictly, save_checkpoint

logger = logging.getLogger(__name__)

KIND = "adapted"
ADAPTED_VERSION = 1
PREFIX = "adapted."
#: Relative tolerance when checking the rebuilt predictor against the stored support logits.
_RTOL, _ATOL = 1e-3, 1e-3
#: Keys of a meta-trained checkpoint's JSON that describe that file, not the model.
_FILE_KEYS = ("format", "format_version", "medmeta_version", "weights", "sha256", "history")


@dataclass
class TrainedModel:
    """A meta-trained method loaded from its checkpoint, ready to adapt.

    Attributes:
        method: the method in eval mode.
        config: its run configuration.
        meta: the checkpoint's JSON description (without the file bookkeeping).
        normalization: how uint8 images become model inputs.
        source: checkpoint file name and weights SHA-256, recorded in adapted checkpoints.
    """

    method: FewShotMethod
    config: RunConfig
    meta: dict[str, Any]
    normalization: Normalization
    source: dict[str, str]

    @property
    def channels(self) -> int:
        return int(self.meta["image_shape"][0])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_shape"][-1])


_MAX_CHANNELS = 4
_MAX_SIZE = 4096


def _rebuild(state: dict[str, Tensor], meta: dict[str, Any], path: Path) -> TrainedModel:
    try:
        cfg = check_method_config(make_config(meta["config"], source=f"config stored in {path}"))
        shape = [int(s) for s in meta["image_shape"]]
        spatial_dims = int(meta["spatial_dims"])
    except (KeyError, TypeError, ValueError, OverflowError, ConfigError) as exc:
        raise CheckpointError(
            f"checkpoint {path} lacks a usable model description ({str(exc)[:200]}): retrain"
        ) from None
    if spatial_dims != 2 or len(shape) != 3:
        raise CheckpointError(
            f"checkpoint {path} is a {spatial_dims}-D model {str(shape)[:80]}: adapt/predict work on 2-D "
            "images only"
        )
    if not (1 <= shape[0] <= _MAX_CHANNELS and all(8 <= s <= _MAX_SIZE for s in shape[1:])):
        raise CheckpointError(
            f"checkpoint {path} describes images of shape {shape}, outside 1-{_MAX_CHANNELS} channels of "
            f"8-{_MAX_SIZE} pixels: not a model medmeta wrote; retrain"
        )
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"checkpoint {path} has class names that are not a list of strings: retrain")
    method = build_method_from_config(
        cfg, channels=shape[0], spatial_dims=spatial_dims, backbone_record=record_from_meta(cfg, meta, path)
    )
    weights = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    load_state_strictly(method, weights, f"checkpoint {path} ({cfg.method.name}, {cfg.model.backbone})")
    method.eval()
    described = {k: v for k, v in meta.items() if k not in _FILE_KEYS}
    source = {"file": path.name, "sha256": str(meta.get("sha256", ""))}
    return TrainedModel(method, cfg, described, normalization_from_meta(meta), source)


def load_trained(path: str | Path) -> TrainedModel:
    """Load a meta-trained checkpoint (``train``'s ``RUN/best.json``); an adapted one gives its base model.

    Raises:
        CheckpointError: missing, truncated, altered or incompatible checkpoint, or a 3-D model.
    """
    json_path = checkpoint_json(path)
    state, meta = load_checkpoint(json_path)
    return _rebuild(state, meta, json_path)


@dataclass
class AdaptedModel:
    """A meta-trained method adapted to a support set: predicts its classes for new images.

    Attributes:
        base: the meta-trained model.
        predictor: ``method.adapt(support)``.
        class_names: name of each class, in label order.
        support_images: uint8 ``(n_support, C, H, W)`` at the model's input size.
        support_labels: int64 ``(n_support,)``.
        support_files: ``CLASS/file name`` of each support image (no folder above the class).
        temperature: probabilities are ``softmax(logits / temperature)`` (`medmeta.eval.calibration`; 1.0
            until `medmeta.deploy.stability.calibrate` fits it); logits and the argmax are unchanged.

    Example:
        >>> # model = adapt_support(load_trained("runs/brain_cross/best.json"), load_support("support/", ...))
        >>> # probs = model.probabilities(torch.from_numpy(load_queries(["q.png"], ...).images))
    """

    base: TrainedModel
    predictor: Predictor
    class_names: tuple[str, ...]
    support_images: Tensor
    support_labels: Tensor
    support_files: tuple[str, ...]
    temperature: float = 1.0

    @property
    def method(self) -> FewShotMethod:
        return self.base.method

    @property
    def n_way(self) -> int:
        return len(self.class_names)

    @property
    def is_metric(self) -> bool:
        """True when the backbone is the same for every task, so support embeddings are meaningful."""
        return bool(self.method.frozen_backbone)

    @property
    def per_image(self) -> bool:
        """MAML-family predictors normalise batch norm with their input batch's statistics: such models
        predict one image at a time, so that an image's result never depends on the others sent with it."""
        return bool(self.method.per_image_prediction)

    def prepare(self, images: Tensor) -> Tensor:
        """uint8 ``(N, C, H, W)`` -> normalised float ``(N, C, H, W)``."""
        return self.base.normalization(images)

    def logits_from_inputs(self, inputs: Tensor) -> Tensor:
        """Normalised float ``(N, C, H, W)`` -> logits ``(N, n_way)`` (differentiable when grad is on)."""
        if self.per_image and inputs.shape[0] > 1:
            return torch.cat([self.predictor.predict(x[None]) for x in inputs])  # (N, n_way)
        return self.predictor.predict(inputs)

    def logits(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """uint8 ``(N, C, H, W)`` -> logits ``(N, n_way)``."""
        with torch.no_grad():
            parts = [
                self.logits_from_inputs(self.prepare(images[i : i + batch_size]))
                for i in range(0, images.shape[0], batch_size)
            ]
        return torch.cat(parts)

    def probabilities(self, images: Tensor) -> Tensor:
        """uint8 ``(N, C, H, W)`` -> class probabilities ``(N, n_way)`` (calibrated by `temperature`)."""
        return torch.softmax(self.logits(images) / self.temperature, dim=-1)

    def embed(self, images: Tensor) -> Tensor:
        """uint8 ``(N, C, H, W)`` -> backbone features ``(N, d)`` (the space metric methods compare in)."""
        with torch.no_grad():
            return embed(self.method.backbone, self.prepare(images)).flatten(1)


def _adapt_predictor(method: FewShotMethod, support: Support) -> Predictor:
    if method.transductive:
        raise ConfigError(
            f"{type(method).__name__} is transductive (it adapts on the queries too): it cannot be adapted "
            "ahead of the queries; use an inductive method"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with torch.no_grad():
            return method.adapt(support)


def adapt_support(
    base: TrainedModel, support: ImageDataset, files: tuple[str, ...] | None = None
) -> AdaptedModel:
    """Adapt `base` to a support set read at its input size (see `medmeta.deploy.inputs.load_support`).

    Raises:
        DataError: the support images do not have the model's shape.
        ConfigError: the method cannot be adapted without queries, or has too few head rows.
    """
    expected = (base.channels, base.image_size, base.image_size)
    if support.image_shape != expected:
        raise CheckpointError(
            f"support images are {support.image_shape} but the model takes {expected}: read them with "
            "load_support(..., image_size, channels) of the model"
        )
    images = torch.from_numpy(np.ascontiguousarray(support.images))  # (n_support, C, H, W) uint8
    labels = torch.from_numpy(support.labels.astype(np.int64))  # (n_support,)
    n_way = support.n_classes
    predictor = _adapt_predictor(base.method, Support(base.normalization(images), labels, n_way))
    names = support.class_names
    if files is None:
        files = tuple(
            f"{names[int(lab)]}/{Path(str(f)).name}"
            for f, lab in zip(
                support.files if support.files is not None else [""] * len(support),
                support.labels,
                strict=True,
            )
        )
    return AdaptedModel(base, predictor, tuple(names), images, labels, files)


def save_adapted(model: AdaptedModel, path: str | Path) -> Path:
    """Write `model` as an adapted checkpoint (``path.json`` + ``path-<sha8>.safetensors``).

    Returns:
        The JSON path.
    """
    state = dict(model.method.state_dict())
    state[PREFIX + "support_images"] = model.support_images
    state[PREFIX + "support_labels"] = model.support_labels
    state[PREFIX + "support_logits"] = model.logits(model.support_images).float()
    meta = dict(model.base.meta)
    meta.update(
        kind=KIND,
        adapted_version=ADAPTED_VERSION,
        backbone=model.base.config.model.backbone,
        class_names=list(model.class_names),
        support_files=list(model.support_files),
        support_counts={c: int((model.support_labels == i).sum()) for i, c in enumerate(model.class_names)},
        input={
            "channels": model.base.channels,
            "image_size": model.base.image_size,
            "dtype": "uint8 scaled to [0, 1], then normalised",
            "resize": "centre crop to square, bilinear resize",
        },
        source_checkpoint=model.base.source,
        written_by=f"medmeta {__version__}",
        temperature=model.temperature,
    )
    return save_checkpoint(path, state, meta)


def load_adapted(path: str | Path) -> AdaptedModel:
    """Load an adapted checkpoint and rebuild its predictor, verified against the stored support logits.

    Raises:
        CheckpointError: not an adapted checkpoint, missing/truncated/altered files, an incompatible
            version, or a rebuilt predictor that disagrees with the stored one.
    """
    json_path = checkpoint_json(path)
    state, meta = load_checkpoint(json_path)
    return _adapted_from(state, meta, json_path)


def _adapted_from(state: dict[str, Tensor], meta: dict[str, Any], json_path: Path) -> AdaptedModel:
    if meta.get("kind") != KIND:
        raise CheckpointError(
            f"{json_path} is a meta-trained checkpoint, not an adapted one: run `medmeta adapt --model "
            f"{json_path} --support DIR --out ADAPTED` first"
        )
    if meta.get("adapted_version") != ADAPTED_VERSION:
        raise CheckpointError(
            f"adapted checkpoint {json_path} has version {str(meta.get('adapted_version'))[:20]} ({str(meta.get('written_by'))[:40]});"
            f" this medmeta {__version__} reads version {ADAPTED_VERSION}: adapt again with this medmeta"
        )
    base = _rebuild(state, meta, json_path)
    try:
        images = state[PREFIX + "support_images"]
        labels = state[PREFIX + "support_labels"]
        stored = state[PREFIX + "support_logits"]
        names = tuple(meta["class_names"])
        files = tuple(meta["support_files"])
    except KeyError as exc:
        raise CheckpointError(f"adapted checkpoint {json_path} lacks {exc}: adapt again") from None
    except TypeError:
        names, files = (), ()  # not lists: refused as inconsistent below
    consistent = (
        images.dtype == torch.uint8
        and images.ndim == 4
        and tuple(images.shape[1:]) == tuple(int(d) for d in meta["image_shape"])
        and labels.ndim == 1
        and images.shape[0] == labels.shape[0] == len(files) == stored.shape[0]
        and labels.numel() > 0
        and all(isinstance(x, str) for x in names + files)
        and set(labels.tolist()) == set(range(len(names)))
    )
    if not consistent:
        raise CheckpointError(f"adapted checkpoint {json_path} has an inconsistent support set: adapt again")
    predictor = _adapt_predictor(base.method, Support(base.normalization(images), labels.long(), len(names)))
    temperature = meta.get("temperature", 1.0)
    if not isinstance(temperature, int | float) or not 0.0 < float(temperature) < float("inf"):
        raise CheckpointError(f"adapted checkpoint {json_path} has an invalid temperature: adapt again")
    model = AdaptedModel(base, predictor, names, images, labels.long(), files, float(temperature))
    rebuilt = model.logits(images)
    if rebuilt.shape != stored.shape or not torch.allclose(rebuilt, stored, rtol=_RTOL, atol=_ATOL):
        raise CheckpointError(
            f"adapted checkpoint {json_path}: the predictor rebuilt from its support set disagrees with the "
            "stored one (different torch or medmeta numerics?): adapt again with this installation"
        )
    return model


def load_model(path: str | Path) -> TrainedModel | AdaptedModel:
    """An adapted checkpoint as `AdaptedModel`, a meta-trained one as `TrainedModel`."""
    json_path = checkpoint_json(path)
    state, meta = load_checkpoint(json_path)
    if meta.get("kind") == KIND:
        return _adapted_from(state, meta, json_path)
    return _rebuild(state, meta, json_path)
