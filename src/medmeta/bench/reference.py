"""The fully-supervised reference: the benchmark's backbone trained on a domain's whole training split.

It is the upper bound a few-shot method is compared with: supervised pretraining
(`medmeta.train.supervised.fit_supervised`, reached through `medmeta.pipeline.train_method`) on the
held-out domain's own training images and classes, then its classification head predicts every image of
the test split that the few-shot episodes are drawn from.
Its features are also tested in those few-shot episodes (``reference.few_shot``): the accuracy a
representation trained with every label of the domain reaches from K labelled images, against which a
pretrained or self-supervised representation can be read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmeta.bench.domains import DomainSplits, query_size
from medmeta.bench.evaluation import class_confusion, evaluate_cell
from medmeta.bench.protocol import Protocol
from medmeta.config import RunConfig, make_config
from medmeta.eval.metrics import batch_episode_metrics, calibration_bins, mean_ci
from medmeta.methods.transfer.base import SupervisedMethod
from medmeta.pipeline import RunData, load_method, normalization_from_meta, train_method
from medmeta.train.loop import ProgressHook, resolve_device


def reference_config(protocol: Protocol, splits: DomainSplits, seed: int) -> RunConfig:
    """The run config of the reference of one domain (a transfer baseline trained on one domain)."""
    r = protocol.reference
    n_shot = max(1, min(protocol.episodes.n_shot, min(splits.val.class_counts().values()) - 1))
    return make_config(
        {
            "data": {
                "train": [splits.name],
                "image_size": protocol.data.image_size,
                "channels": protocol.data.channels,
                "allow_class_overlap": True,
            },
            "episodes": {"n_way": None, "n_shot": n_shot, "n_query": protocol.episodes.n_query},
            "model": {"backbone": protocol.backbone},
            "method": {"name": r.method, "options": {"batch_size": r.batch_size}},
            "train": {
                **protocol.train.model_dump(),
                "epochs": r.epochs,
                "episodes_per_epoch": r.steps_per_epoch,
                "lr": r.lr,
                "seed": seed,
            },
        },
        source=f"reference of {splits.name}",
    )


@torch.no_grad()
def head_logits(
    method: SupervisedMethod,
    images: np.ndarray,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    chunk: int = 256,
) -> torch.Tensor:
    """Logits ``(N, n_classes)`` of the pretraining head for uint8 images ``(N, C, *spatial)``."""
    method.eval()
    out = []
    for i in range(0, len(images), chunk):
        x = prepare(torch.from_numpy(images[i : i + chunk]).to(device))  # (B, C, *spatial)
        out.append(method.supervised_logits(method.features(x)).float().cpu())  # (B, n_classes)
    return torch.cat(out)


def few_shot_fields(
    method: SupervisedMethod,
    protocol: Protocol,
    splits: DomainSplits,
    episode_seed: int,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
) -> list[dict[str, Any]]:
    """The trained reference as a few-shot method on the held-out domain's test episodes (the cells' own
    episodes: same shots, queries and `episode_seed`): one entry per number of shots with ``shots``,
    ``n_way``, ``n_query``, ``episodes``, ``metrics`` and ``per_episode`` (as a cell has them)."""
    out = []
    for k in protocol.eval.shots:
        fields = evaluate_cell(
            method,
            splits.test,
            n_shot=k,
            n_query=query_size(splits, k, protocol.eval.n_query),
            episodes=protocol.eval.episodes,
            seed=episode_seed,
            prepare=prepare,
            device=device,
        )
        keep = ("n_way", "n_query", "episodes", "metrics", "per_episode", "pooled_ece")
        out.append({"shots": k, **{name: fields[name] for name in keep}})
    return out


def train_reference(
    protocol: Protocol,
    splits: DomainSplits,
    seed: int,
    out_dir: Path,
    progress: ProgressHook | None = None,
    episode_seed: int | None = None,
) -> dict[str, Any]:
    """Train the reference of `splits` (checkpoints in `out_dir`) and test it on the test split.

    With ``reference.few_shot`` and an `episode_seed` (the cells' test-episode seed for this training seed),
    its features are also tested in the held-out domain's few-shot episodes (`few_shot_fields`).

    Returns:
        JSON-ready fields: ``metrics`` (accuracy with a binomial 95% CI over test images; the other
        metrics over the whole test set), ``per_image_correct``, ``history``, ``train_seconds``,
        ``calibration``, ``confusion``, ``classes``, ``n_test`` and ``few_shot`` (a list, empty when off).

    Raises:
        ConfigError: the training and test splits of the domain have different classes.
    """
    from medmeta.errors import ConfigError

    if splits.train.class_names != splits.test.class_names:
        raise ConfigError(
            f"domain '{splits.name}': training classes {list(splits.train.class_names)} differ from test "
            f"classes {list(splits.test.class_names)}; disable the reference (reference.enabled: false)"
        )
    cfg = reference_config(protocol, splits, seed)
    data = RunData(train=[splits.train], val=[splits.val], test=[splits.test])
    _, fit_result, _ = train_method(cfg, out_dir=out_dir, data=data, progress=progress, resumable=False)
    assert fit_result.best_checkpoint is not None
    method, _, meta = load_method(fit_result.best_checkpoint)
    assert isinstance(method, SupervisedMethod)
    device = resolve_device(cfg.train.device)
    method.to(device)
    prepare = normalization_from_meta(meta)
    logits = head_logits(method, splits.test.images, prepare, device)
    target = torch.from_numpy(splits.test.labels.astype(np.int64))  # (N,)
    values = {k: float(v[0]) for k, v in batch_episode_metrics(logits[None], target[None]).items()}
    correct = (logits.argmax(-1) == target).double().numpy()  # (N,)
    metrics = {k: {"mean": v, "ci95": float("nan")} for k, v in values.items()}
    metrics["accuracy"] = dict(zip(("mean", "ci95"), mean_ci(correct), strict=True))
    probs = torch.softmax(logits.double(), dim=-1)[None]  # (1, N, n_classes)
    identity = np.arange(splits.test.n_classes)[None]  # (1, n_classes)
    return {
        "metrics": metrics,
        "per_image_correct": correct.astype(int).tolist(),
        "history": fit_result.history,
        "train_seconds": fit_result.seconds,
        "calibration": calibration_bins(probs, target[None]).sum(0).tolist(),
        "confusion": class_confusion(logits[None], target[None], identity, splits.test.n_classes).tolist(),
        "classes": list(splits.test.class_names),
        "n_test": len(splits.test),
        "few_shot": []
        if episode_seed is None or not protocol.reference.few_shot
        else few_shot_fields(method, protocol, splits, episode_seed, prepare, device),
    }
