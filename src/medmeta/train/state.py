"""The training state a run resumes from: ``OUT/train_state`` (a checkpoint; nothing is pickled).

Written at the end of every epoch, after the epoch's ``last``/``best``/``history.json``, as one atomic
checkpoint (`medmeta.train.checkpoint.save_checkpoint`) that holds everything the next epoch depends on:

- tensors (safetensors): the model's weights (``model.*``), the best epoch's weights when they differ
  (``best.*``), every optimiser state tensor (``optimizer.<param>.<name>``) and torch's RNG state as a
  uint8 tensor (``rng.torch``, plus ``rng.cuda.<i>`` on CUDA);
- JSON description: epochs done, the optimiser's param groups and non-tensor state, the LR scheduler's
  and AMP scaler's state dicts, the keeper's history and best score, and the run's description (config,
  classes...) that a resumed run must match.

Episodes are drawn from ``(seed, index)`` and no training code uses numpy's or Python's global RNG, so
torch's RNG is the only random state to carry. On CPU a resumed run ends with exactly the weights of an
uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medmeta.config import TrainConfig
from medmeta.errors import CheckpointError, ConfigError
from medmeta.outputs import STATE_FILE
from medmeta.train.checkpoint import load_checkpoint, save_checkpoint
from medmeta.train.keeper import BestKeeper

KIND = "medmeta-train-state"
STATE_VERSION = 1
#: Config fields a resumed run may change: where the data is and what it runs on. ``train.epochs`` may
#: also grow when the learning rate is constant (a cosine schedule is laid out over all epochs).
RESUMABLE_CHANGES = ("data.data_dir", "train.device", "train.threads")
_VOLATILE = ("torch_version", "medmeta_version")


def save_train_state(
    out: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scaler: torch.amp.GradScaler | None,
    keeper: BestKeeper,
    meta: dict[str, Any],
) -> Path:
    """Write ``out/train_state`` after an epoch (see the module docstring); returns its JSON path."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    epochs_done = len(keeper.history)
    if keeper.best_epoch != epochs_done:
        tensors.update({f"best.{k}": v for k, v in keeper.best_state.items()})
    opt = optimizer.state_dict()
    plain_state: dict[str, dict[str, Any]] = {}
    for index, entries in opt["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                plain_state.setdefault(str(index), {})[name] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    description = {
        "kind": KIND,
        "state_version": STATE_VERSION,
        "epochs_done": epochs_done,
        "optimizer": {"param_groups": opt["param_groups"], "state": plain_state},
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "keeper": keeper.state(),
        "run": meta,
    }
    return save_checkpoint(out / STATE_FILE, tensors, description)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def check_resumable(stored: dict[str, Any], meta: dict[str, Any], cfg: TrainConfig, epochs_done: int) -> None:
    """Refuse to continue a run described by `stored` as the run described by `meta`.

    Raises:
        ConfigError: a field of the config or the data (classes, image shape...) differs beyond
            `RESUMABLE_CHANGES`, or ``train.epochs`` changed where it may not.
    """
    as_stored = json.loads(json.dumps(meta, default=str))  # as the description was written: lists, not tuples
    old = _flat({k: v for k, v in stored.items() if k not in _VOLATILE})
    new = _flat({k: v for k, v in as_stored.items() if k not in _VOLATILE})
    free = {f"config.{k}" for k in RESUMABLE_CHANGES}
    if cfg.lr_schedule == "constant":
        free.add("config.train.epochs")
    changed = sorted(k for k in old.keys() | new.keys() if k not in free and old.get(k) != new.get(k))
    if changed:
        shown = "; ".join(
            f"{k.removeprefix('config.')}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:3]
        )
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise ConfigError(
            f"--resume: the run differs from the one in the folder ({shown}{more}): resume it with its own "
            "config (OUT/config.yaml), or pass --overwrite to start again"
        )
    if cfg.epochs < epochs_done:
        raise ConfigError(
            f"--resume: the folder's run has done {epochs_done} epochs, more than train.epochs={cfg.epochs}"
        )


def resume_training(
    out: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scaler: torch.amp.GradScaler | None,
    keeper: BestKeeper,
    cfg: TrainConfig,
    meta: dict[str, Any],
) -> int:
    """Restore model, optimiser, scheduler, scaler, RNG and keeper from ``out/train_state``.

    Returns:
        The number of epochs already done (the next epoch's 0-based index).

    Raises:
        CheckpointError: the state is missing, altered (checksums) or not a training state.
        ConfigError: the run differs from the folder's (see `check_resumable`).
    """
    state, stored = load_checkpoint(out / STATE_FILE)
    if stored.get("kind") != KIND or stored.get("state_version") != STATE_VERSION:
        raise CheckpointError(
            f"{out / STATE_FILE} is not a training state this medmeta reads (kind {stored.get('kind')!r}, "
            f"version {stored.get('state_version')!r}): pass --overwrite to train again"
        )
    try:
        done = int(stored["epochs_done"])
        run = stored["run"]
        book = stored["keeper"]
        opt = stored["optimizer"]
        check_resumable(run, meta, cfg, done)
        weights = _prefixed(state, "model.")
        best = _prefixed(state, "best.") or weights
        model.load_state_dict(weights, strict=True)
        entries: dict[int, dict[str, Any]] = {}
        for key, value in state.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                entries.setdefault(int(index), {})[name] = value
        for index, plain in opt["state"].items():
            entries.setdefault(int(index), {}).update(plain)
        optimizer.load_state_dict({"state": entries, "param_groups": opt["param_groups"]})
        _load_optional(scheduler, stored["scheduler"], "LR scheduler")
        _load_optional(scaler, stored["scaler"], "AMP scaler")
        torch.set_rng_state(state["rng.torch"])
        cuda = [state[k] for k in sorted(k for k in state if k.startswith("rng.cuda."))]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        keeper.resume(book, best, model)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise CheckpointError(
            f"{out / STATE_FILE} does not fit this run ({str(exc).splitlines()[0]}): pass --overwrite to "
            "train again"
        ) from None
    return done


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _load_optional(target: Any, stored: dict[str, Any] | None, what: str) -> None:
    if (target is None) != (stored is None):
        raise ValueError(f"the stored run {'has' if stored is not None else 'has no'} {what}")
    if target is not None:
        target.load_state_dict(stored)


def best_record_value(keeper: BestKeeper, key: str) -> float:
    """`key` (e.g. ``val_accuracy``) of the keeper's best epoch, NaN when absent."""
    if not keeper.best_epoch:
        return math.nan
    return float(keeper.history[keeper.best_epoch - 1].get(key, math.nan))
