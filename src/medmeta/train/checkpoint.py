"""Checkpoints that load safely: safetensors weights plus a JSON description. Nothing is unpickled.

A checkpoint named ``best`` in ``run/`` is ``run/best.json`` pointing at ``run/best-<sha8>.safetensors``.
Saving writes the new weights file first, then atomically replaces the JSON, then deletes the old
weights: at every instant the JSON names a complete weights file, so a crash mid-save loses nothing.
Loading checks the format version and the weights' SHA-256 before reading them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medmeta import __version__
from medmeta.errors import CheckpointError

FORMAT = "medmeta-checkpoint"
FORMAT_VERSION = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_json(path: str | Path) -> Path:
    """The JSON file of a checkpoint given as ``run/best``, ``run/best.json`` or its weights file."""
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder: give the checkpoint's .json file, e.g. {p / 'best.json'}")
    if p.suffix == ".json":
        return p
    if p.suffix == ".safetensors":
        stem = p.stem.rsplit("-", 1)[0]
        return p.with_name(stem + ".json")
    return p.with_name(p.name + ".json")


def save_checkpoint(path: str | Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Save `state` (a state dict) and `meta` (JSON-serialisable) as checkpoint `path`.

    Args:
        path: ``dir/name`` or ``dir/name.json``.
        state: tensors to store (made contiguous, moved to CPU).
        meta: description: method, config, class names, normalisation, metrics...

    Returns:
        The JSON path.
    """
    json_path = checkpoint_json(path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(dir=json_path.parent, prefix=f".{json_path.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        digest = _sha256(Path(tmp))
        weights = json_path.with_name(f"{json_path.stem}-{digest[:8]}.safetensors")
        os.replace(tmp, weights)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    old_weights = None
    if json_path.exists():
        try:
            old_weights = json.loads(json_path.read_text()).get("weights")
        except (json.JSONDecodeError, OSError):
            old_weights = None
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medmeta_version": __version__,
        "weights": weights.name,
        "sha256": digest,
        **meta,
    }
    _atomic_write_text(json_path, json.dumps(record, indent=2, default=str))
    if old_weights and old_weights != weights.name:
        (json_path.parent / old_weights).unlink(missing_ok=True)
    return json_path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint's weights and description, verifying format, version and checksum.

    Raises:
        CheckpointError: missing, truncated or altered files, or an incompatible format version.
    """
    json_path = checkpoint_json(path)
    if not json_path.is_file():
        raise CheckpointError(
            f"checkpoint {json_path} not found: check the path (train writes run/best.json)"
        )
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"checkpoint {json_path} is truncated or not JSON ({exc}): restore it or train again"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{json_path} is not a medmeta checkpoint (no format '{FORMAT}')")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {json_path} has format version {version} (written by medmeta "
            f"{meta.get('medmeta_version')}); this medmeta {__version__} reads version {FORMAT_VERSION}: "
            "use a matching medmeta or retrain"
        )
    weights = json_path.parent / str(meta.get("weights"))
    if not weights.is_file():
        raise CheckpointError(f"weights file {weights} named by {json_path} is missing: restore it")
    digest = _sha256(weights)
    if digest != meta.get("sha256"):
        raise CheckpointError(
            f"weights file {weights} is truncated or altered (SHA-256 {digest[:12]}..., expected "
            f"{str(meta.get('sha256'))[:12]}...): restore it or train again"
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read weights {weights}: {exc}") from None
    return state, meta
