"""Checkpoints: round trip, and every way a checkpoint can be broken gets a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medmeta.errors import CheckpointError
from medmeta.train import checkpoint as ckpt
from medmeta.train.checkpoint import load_checkpoint, save_checkpoint


def _state(value: float = 1.0) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3, 4), value), "b": torch.arange(4.0)}


def test_save_then_load_round_trips_weights_and_description(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "best", _state(), {"method": "protonet", "epoch": 2})
    assert path == tmp_path / "best.json"
    state, meta = load_checkpoint(tmp_path / "best")
    torch.testing.assert_close(state["w"], _state()["w"])
    assert meta["method"] == "protonet" and meta["format_version"] == ckpt.FORMAT_VERSION


def test_saving_again_replaces_the_weights_file_and_removes_the_old_one(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "best", _state(1.0), {})
    save_checkpoint(tmp_path / "best", _state(2.0), {})
    assert len(list(tmp_path.glob("best-*.safetensors"))) == 1
    assert float(load_checkpoint(tmp_path / "best.json")[0]["w"][0, 0]) == 2.0


def test_a_crash_while_saving_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path / "best", _state(1.0), {"epoch": 1})

    def boom(*_args: object, **_kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_atomic_write_text", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "best", _state(5.0), {"epoch": 2})
    state, meta = load_checkpoint(tmp_path / "best")
    assert meta["epoch"] == 1 and float(state["w"][0, 0]) == 1.0


def test_truncated_weights_are_detected_by_checksum(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "best", _state(), {})
    weights = next(tmp_path.glob("best-*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="truncated or altered"):
        load_checkpoint(tmp_path / "best.json")


def test_a_truncated_json_file_is_named(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "best", _state(), {})
    path.write_text(path.read_text()[:40])
    with pytest.raises(CheckpointError, match="truncated or not JSON"):
        load_checkpoint(path)


def test_a_checkpoint_of_another_format_version_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "best", _state(), {})
    record = json.loads(path.read_text())
    record["format_version"] = 99
    path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)


def test_a_missing_checkpoint_says_where_train_writes_one(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found: check the path"):
        load_checkpoint(tmp_path / "nothing.json")


def test_a_missing_weights_file_is_named(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "best", _state(), {})
    next(tmp_path.glob("best-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="is missing: restore it"):
        load_checkpoint(tmp_path / "best")


def test_a_json_that_is_not_a_medmeta_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(CheckpointError, match="is not a medmeta checkpoint"):
        load_checkpoint(tmp_path / "x.json")
