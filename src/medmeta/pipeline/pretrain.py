"""From a `PretrainConfig` to a self-supervised backbone: the Python API behind ``medmeta pretrain``.

Unlabelled images of every named domain are pooled (labels are never read), a backbone is built as for
``medmeta train`` and trained with a self-supervised method (`medmeta.methods.self_supervised`) through the
one loop, `medmeta.train.loop.fit`. The run folder holds ``best.json`` (kind ``pretrain``; the last epoch,
since there is no validation) whose ``backbone.*`` weights start any method's backbone
(``--weights RUN/best.json``, `medmeta.models.factory.make_backbone`).

Example:
    >>> cfg = make_pretrain_config({"data": {"domains": ["blood_pbc"], "image_size": 32}})  # doctest: +SKIP
    >>> method, result, images = pretrain(cfg, out_dir="runs/ssl")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from medmeta import __version__
from medmeta.config import PretrainConfig
from medmeta.data.registry import DomainSpec
from medmeta.methods.self_supervised import SelfSupervisedMethod, build_ssl_method
from medmeta.models.backbones import feature_dim
from medmeta.models.factory import PRETRAIN_KIND, make_backbone
from medmeta.outputs import RunFolder, check_run_folder
from medmeta.pipeline.classification import default_normalization, read_pretrained_start
from medmeta.train.loop import FitResult, ProgressHook, fit
from medmeta.train.self_supervised import UnlabelledImages, ViewBatches


def load_pretrain_images(cfg: PretrainConfig) -> UnlabelledImages:
    """The pooled unlabelled images of ``cfg.data.domains`` at the run's size and channels.

    Raises:
        DataError: an unknown domain, 3-D volumes, or fewer than 2 images.
    """
    d = cfg.data
    datasets = [
        DomainSpec.parse(text).load(
            root=d.data_dir, image_size=d.image_size, channels=d.channels, skip_bad=d.skip_bad
        )
        for text in d.domains
    ]
    return UnlabelledImages.build(datasets, max_images=d.max_images, seed=cfg.train.seed)


def build_pretrainer(cfg: PretrainConfig, channels: int) -> SelfSupervisedMethod:
    """The configured backbone (fresh, or from ``model.weights``) inside the configured SSL method."""
    backbone = make_backbone(
        cfg.model,
        in_channels=channels,
        spatial_dims=2,
        image_size=cfg.data.image_size,
        normalization=default_normalization(channels),
        start=read_pretrained_start(cfg.model.weights),
    )
    example = torch.zeros(2, channels, cfg.data.image_size, cfg.data.image_size)
    return build_ssl_method(cfg.ssl, backbone, feature_dim(backbone, example))


def _write_config(folder: RunFolder, cfg: PretrainConfig) -> None:
    """The earlier run's files go (overwrite) or its stale results (resume); the run's config is written."""
    folder.clear()
    path = folder.path / "config.yaml"
    tmp = path.with_name(f".config.yaml.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    os.replace(tmp, path)


def pretrain(
    cfg: PretrainConfig,
    *,
    out_dir: str | Path | None = None,
    images: UnlabelledImages | None = None,
    progress: ProgressHook | None = None,
    overwrite: bool = False,
    resume: bool = False,
    resumable: bool = True,
) -> tuple[SelfSupervisedMethod, FitResult, UnlabelledImages]:
    """Seed, pool the images, build backbone and method, and train them (see `medmeta.train.loop.fit`).

    Args:
        cfg: the run.
        out_dir: run folder (None: nothing written), claimed as by ``medmeta train``
            (`medmeta.outputs.check_run_folder`); ``config.yaml`` is written into it.
        images: the pooled images, when already loaded (else from ``cfg.data``).
        progress: progress receiver.
        overwrite: replace the earlier run in `out_dir` (only medmeta's files).
        resume: continue `out_dir`'s run from its last complete epoch.
        resumable: write the training state `resume` needs after every epoch.

    Returns:
        The trained method (backbone under ``method.backbone``), the fit result and the images.

    Raises:
        OutputError: the run folder may not or cannot be used as asked.
        DataError: unusable data (unknown domain, 3-D volumes, too few images).
        CheckpointError: ``model.weights`` names an unusable checkpoint.
    """
    folder = None if out_dir is None else check_run_folder(Path(out_dir), overwrite=overwrite, resume=resume)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if images is None:
        images = load_pretrain_images(cfg)
    torch.manual_seed(cfg.train.seed)
    method = build_pretrainer(cfg, images.channels)
    norm = default_normalization(images.channels)
    meta: dict[str, Any] = {
        "kind": PRETRAIN_KIND,
        "ssl": cfg.ssl.method,
        "backbone": cfg.model.backbone,
        "config": cfg.model_dump(mode="json"),
        "images_per_domain": images.images_per_domain(),
        "image_shape": list(images.image_shape),
        "spatial_dims": 2,
        "input": {"channels": images.channels, "image_size": cfg.data.image_size},
        "normalization": {"mean": list(norm.mean), "std": list(norm.std)},
        "torch_version": torch.__version__,
        "medmeta_version": __version__,
    }
    record = getattr(method.backbone, "record", None)
    if callable(record):  # a library backbone: its spec, preprocessing and the weights it started from
        meta["backbone_record"] = record()
    run: dict[str, Any] = {"out_dir": None, "resume": False, "save_state": resumable, "on_start": None}
    if folder is not None:
        run["out_dir"] = folder.prepare()
        run["resume"] = folder.resume
        run["on_start"] = functools.partial(_write_config, folder, cfg)
    source = ViewBatches.from_config(images, cfg, prepare=norm)
    result = fit(method, source, cfg.train, validation=None, meta=meta, progress=progress, **run)
    return method, result, images
