"""Checkpoints that load safely: safetensors weights plus a JSON description. Nothing is unpickled.

A checkpoint named ``best`` in ``run/`` is ``run/best.json`` naming ``best-<sha8>.safetensors`` beside it.
Saving writes the new weights file first, then atomically replaces the JSON, then deletes the old
weights: at every instant the JSON names a complete weights file, so a crash mid-save loses nothing.

Trust boundary (a checkpoint is a folder): the weights field must be a plain file name inside the
JSON's folder, a regular file and not a symlink; anything else is refused before it is opened, and saving
deletes an old weights file only when it has the name this module gives one. The whole description is
covered by a SHA-256 (``description_sha256``) beside a per-field digest (``field_sha256``), so an edited
field (class names, image shape, normalisation, config...) is refused and named.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from medmeta import __version__
from medmeta.errors import CheckpointError
from medmeta.outputs import check_output_file

FORMAT = "medmeta-checkpoint"
FORMAT_VERSION = 2
MAX_JSON_BYTES = 64 << 20
"""A checkpoint description larger than this is refused before it is read."""

_DIGEST_KEYS = ("description_sha256", "field_sha256")
_WEIGHTS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,200}-[0-9a-f]{8}\.safetensors")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHOWN_KEYS = 4


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _digest(value: Any) -> str:
    return hashlib.sha256(_canonical(value)).hexdigest()


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


def _is_own_weights(folder: Path, name: object, stem: str) -> bool:
    """True if `name` is a weights file this module would have written for checkpoint `stem` in `folder`."""
    if not isinstance(name, str) or not _WEIGHTS_NAME.fullmatch(name) or not name.startswith(stem + "-"):
        return False
    try:
        return stat.S_ISREG(os.lstat(folder / name).st_mode)
    except OSError:
        return False


def sign(record: dict[str, Any]) -> dict[str, Any]:
    """`record` (JSON values) with its per-field and whole-description digests added."""
    body = {k: v for k, v in record.items() if k not in _DIGEST_KEYS}
    body["field_sha256"] = {k: _digest(v)[:16] for k, v in body.items()}
    body["description_sha256"] = _digest(body)
    return body


def save_checkpoint(path: str | Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Save `state` (a state dict) and `meta` (JSON-serialisable) as checkpoint `path`.

    Args:
        path: ``dir/name`` or ``dir/name.json``.
        state: tensors to store (made contiguous, moved to CPU).
        meta: description: method, config, class names, normalisation, metrics... (values that are not
            JSON are stored as their ``str``).

    Returns:
        The JSON path.

    Raises:
        OutputError: something other than a regular file (a symlink, FIFO, device or folder) is in the way
            of the JSON or weights file (`medmeta.outputs.check_output_file`); it is left as it was.
    """
    json_path = checkpoint_json(path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    check_output_file(json_path, overwrite=True, what="checkpoint")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(dir=json_path.parent, prefix=f".{json_path.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        digest = _sha256(Path(tmp))
        weights = json_path.with_name(f"{json_path.stem}-{digest[:8]}.safetensors")
        check_output_file(weights, overwrite=True, what="checkpoint weights")
        os.replace(tmp, weights)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    old_weights = None
    if json_path.exists():
        try:
            old = json.loads(json_path.read_text()) if json_path.stat().st_size <= MAX_JSON_BYTES else None
            old_weights = old.get("weights") if isinstance(old, dict) else None
        except (ValueError, OSError, RecursionError):
            old_weights = None
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "medmeta_version": __version__,
        "weights": weights.name,
        "sha256": digest,
        **{k: v for k, v in meta.items() if k not in _DIGEST_KEYS},
    }
    record = sign(json.loads(json.dumps(record, default=str)))
    _atomic_write_text(json_path, json.dumps(record, indent=2))
    if old_weights != weights.name and _is_own_weights(json_path.parent, old_weights, json_path.stem):
        (json_path.parent / str(old_weights)).unlink(missing_ok=True)
    return json_path


def amend_checkpoint(path: str | Path, fields: dict[str, Any]) -> Path:
    """Add `fields` to a checkpoint's description, signed again; its weights file is left as it is.

    The checkpoint is verified first (`load_checkpoint`), and the JSON replaced atomically.

    Raises:
        CheckpointError: the checkpoint does not verify.
        ValueError: `fields` would change what names or checks the weights file.
    """
    json_path = checkpoint_json(path)
    _, meta = load_checkpoint(json_path)
    owned = {"format", "format_version", "medmeta_version", "weights", "sha256", *_DIGEST_KEYS}
    if owned & fields.keys():
        raise ValueError(f"amend_checkpoint cannot change {sorted(owned & fields.keys())}")
    record = sign({**meta, **json.loads(json.dumps(fields, default=str))})
    _atomic_write_text(json_path, json.dumps(record, indent=2))
    return json_path


def _read_description(json_path: Path) -> dict[str, Any]:
    try:
        info = json_path.stat()
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {json_path} not found: check the path (train writes run/best.json)"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {json_path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(
            f"checkpoint {json_path} is not a regular file: give the checkpoint's .json file"
        )
    if info.st_size > MAX_JSON_BYTES:
        raise CheckpointError(
            f"checkpoint {json_path} is {info.st_size} bytes, more than a checkpoint description "
            f"({MAX_JSON_BYTES} bytes at most): not a medmeta checkpoint"
        )
    try:
        meta = json.loads(json_path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {json_path} is truncated or not JSON ({reason}): restore it or train again"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {json_path}: {exc.strerror}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{json_path} is not a medmeta checkpoint (no format '{FORMAT}')")
    return meta


def _check_version(json_path: Path, meta: dict[str, Any]) -> None:
    version = meta.get("format_version")
    if version == FORMAT_VERSION:
        return
    written = str(meta.get("medmeta_version"))[:40]
    shown = str(version)[:20]
    if version == 1:
        raise CheckpointError(
            f"checkpoint {json_path} has format version 1 (written by medmeta {written}), which has no "
            f"description checksum; this medmeta {__version__} reads version {FORMAT_VERSION}: train or "
            "adapt again with this medmeta"
        )
    raise CheckpointError(
        f"checkpoint {json_path} has format version {shown} (written by medmeta {written}); this medmeta "
        f"{__version__} reads version {FORMAT_VERSION}: use a matching medmeta or retrain"
    )


def _check_description(json_path: Path, meta: dict[str, Any]) -> None:
    """Refuse a description that differs from the one saved, naming the changed fields when it can."""
    stored = meta.get("description_sha256")
    body = {k: v for k, v in meta.items() if k != "description_sha256"}
    if isinstance(stored, str) and stored == _digest(body):
        return
    fields = meta.get("field_sha256")
    if isinstance(fields, dict) and isinstance(stored, str):
        now = {k: _digest(v)[:16] for k, v in body.items() if k != "field_sha256"}
        changed = sorted(k for k in now.keys() & fields.keys() if now[k] != fields[k])
        added = sorted(now.keys() - fields.keys())
        removed = sorted(str(k) for k in fields.keys() - now.keys())
        differences = _listing({"changed": changed, "added": added, "removed": removed})
        if differences:
            raise CheckpointError(
                f"checkpoint {json_path} was edited after it was saved ({differences}): restore the "
                "original file, or train / adapt again"
            )
    raise CheckpointError(
        f"checkpoint {json_path} was edited after it was saved (its description checksum does not match): "
        "restore the original file, or train / adapt again"
    )


def _listing(kinds: dict[str, list[str]]) -> str:
    """``"changed 'a', 'b'; removed 'c'"``: each non-empty kind with its first few names ("" if none)."""
    return "; ".join(f"{label} {_few(keys)}" for label, keys in kinds.items() if keys)


def _few(keys: list[str]) -> str:
    shown = ", ".join(repr(k[:60]) for k in keys[:_SHOWN_KEYS])
    return shown + (f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else "")


def _weights_path(json_path: Path, meta: dict[str, Any]) -> Path:
    """The weights file named by `meta`, only if it is a plain regular file inside the JSON's folder."""
    name = meta.get("weights")
    if not isinstance(name, str) or not _WEIGHTS_NAME.fullmatch(name):
        shown = repr(name)[:80]
        raise CheckpointError(
            f"checkpoint {json_path} names weights {shown}, not a plain '<name>-<sha8>.safetensors' file "
            "beside it: a checkpoint's files must sit in its own folder; restore the original checkpoint"
        )
    weights = json_path.parent / name
    try:
        mode = os.lstat(weights).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"weights file {weights} named by {json_path} is missing: restore it") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(
            f"weights file {weights} named by {json_path} is a symlink or special file, not a regular file "
            "in the checkpoint's folder: copy the real file there"
        )
    return weights


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint's weights and description, verifying format, version and both checksums.

    Nothing outside the JSON's folder is opened: the weights must be a plain regular file beside it.

    Raises:
        CheckpointError: missing, truncated or altered files, an edited description, weights named
            outside the checkpoint's folder, or an incompatible format version.
    """
    json_path = checkpoint_json(path)
    meta = _read_description(json_path)
    _check_version(json_path, meta)
    _check_description(json_path, meta)
    weights = _weights_path(json_path, meta)
    expected = meta.get("sha256")
    if not isinstance(expected, str) or not _SHA256.fullmatch(expected):
        raise CheckpointError(
            f"checkpoint {json_path} has no valid weights checksum: restore it or train again"
        )
    digest = _sha256(weights)
    if digest != expected:
        raise CheckpointError(
            f"weights file {weights} is truncated or altered (SHA-256 {digest[:12]}..., expected "
            f"{expected[:12]}...): restore it or train again"
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"cannot read weights {weights}: {str(exc).splitlines()[0]}") from None
    return state, meta


def load_state_strictly(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load `state` into `module`, or raise one line naming missing, unexpected and mis-shaped keys.

    Args:
        module: the freshly built model.
        state: its saved state dict.
        what: how to name the checkpoint in the error, e.g. ``"checkpoint run/best.json (protonet)"``.

    Raises:
        CheckpointError: the keys or shapes differ (the first few of each kind are named).
    """
    own = module.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} saved vs {tuple(own[k].shape)} built"
        for k in own.keys() & state.keys()
        if own[k].shape != state[k].shape
    )
    differences = _listing({"missing keys": missing, "unexpected keys": unexpected, "shapes": shapes})
    if differences:
        raise CheckpointError(
            f"{what} does not fit the model its config builds ({differences}): use the medmeta that "
            "wrote it, or train again"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{what} does not fit its model: {str(exc).splitlines()[0]}") from None
