"""Checkpoints: round trip, and every way a checkpoint can be broken gets a clear error."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
import torch
from torch import nn

from medmeta.errors import CheckpointError, OutputError
from medmeta.train import checkpoint as ckpt
from medmeta.train.checkpoint import load_checkpoint, save_checkpoint
from tests._helpers.audit import recording_opens as _recording_opens


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
    path.write_text(json.dumps(ckpt.sign(record)))
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


# --- trust boundary: a checkpoint is a folder (issue 16, items 1, 2, 4 and 9) ---


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("keep me")
    return victim


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_saving_over_a_json_naming_an_outside_file_never_deletes_it(tmp_path: Path, how: str) -> None:
    victim = _victim(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    named = str(victim) if how == "absolute" else "../outside/victim.txt"
    (run / "best.json").write_text(json.dumps({"format": ckpt.FORMAT, "weights": named}))
    save_checkpoint(run / "best", _state(), {})
    assert victim.read_text() == "keep me"
    load_checkpoint(run / "best")


def test_saving_deletes_only_the_old_weights_file_it_named_itself(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save_checkpoint(run / "best", _state(1.0), {})
    other = run / "notes-0123abcd.safetensors"  # a user's file with a weights-like name of another stem
    other.write_text("mine")
    record = json.loads((run / "best.json").read_text())
    record["weights"] = other.name
    (run / "best.json").write_text(json.dumps(record))
    save_checkpoint(run / "best", _state(2.0), {})
    assert other.read_text() == "mine"


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "subfolder", "symlink"])
def test_weights_named_outside_the_checkpoint_folder_are_refused_before_being_opened(
    tmp_path: Path, kind: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    foreign = outside / "best-0123abcd.safetensors"
    save_checkpoint(outside / "best", _state(7.0), {})
    next(outside.glob("best-*.safetensors")).rename(foreign)
    run = tmp_path / "run"
    path = save_checkpoint(run / "best", _state(), {})
    record = json.loads(path.read_text())
    if kind == "symlink":
        (run / "best-89abcdef.safetensors").symlink_to(foreign)
        name = "best-89abcdef.safetensors"
    else:
        name = {
            "absolute": str(foreign),
            "dotdot": "../outside/" + foreign.name,
            "subfolder": "x/" + foreign.name,
        }[kind]
    record["weights"] = name
    record["sha256"] = ckpt._sha256(foreign)
    path.write_text(json.dumps(ckpt.sign(record)))
    with pytest.raises(CheckpointError, match=r"plain|symlink") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_loading_never_hashes_a_system_file_named_as_weights(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "best", _state(), {})
    record = json.loads(path.read_text())
    record["weights"] = "/etc/passwd"
    path.write_text(json.dumps(ckpt.sign(record)))
    opened: list[str] = []
    with _recording_opens(opened), pytest.raises(CheckpointError, match="plain"):
        load_checkpoint(path)
    assert not any("passwd" in p for p in opened)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("class_names", ["b", "a"]),
        ("image_shape", [3, 64, 64]),
        ("normalization", {"mean": [0.0], "std": [1.0]}),
    ],
)
def test_an_edited_description_field_is_refused_and_named(tmp_path: Path, field: str, value: object) -> None:
    meta = {
        "class_names": ["a", "b"],
        "image_shape": [3, 32, 32],
        "normalization": {"mean": [0.5], "std": [0.2]},
    }
    path = save_checkpoint(tmp_path / "best", _state(), meta)
    record = json.loads(path.read_text())
    record[field] = value
    path.write_text(json.dumps(record, indent=2))
    with pytest.raises(CheckpointError, match=f"edited after it was saved \\(changed '{field}'\\)"):
        load_checkpoint(path)


def test_a_removed_or_added_description_field_is_named(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "best", _state(), {"class_names": ["a", "b"]})
    record = json.loads(path.read_text())
    del record["class_names"]
    record["threshold"] = 0.5
    path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="added 'threshold'; removed 'class_names'"):
        load_checkpoint(path)


def test_reformatting_the_json_without_changing_it_still_loads(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "best", _state(), {"class_names": ["a", "b"]})
    path.write_text(json.dumps(dict(reversed(json.loads(path.read_text()).items()))))
    assert load_checkpoint(path)[1]["class_names"] == ["a", "b"]


def test_a_version_1_checkpoint_without_a_description_checksum_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "best", _state(), {})
    record = json.loads(path.read_text())
    record["format_version"] = 1
    del record["description_sha256"], record["field_sha256"]
    path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"format version 1 .* no description checksum"):
        load_checkpoint(path)


@pytest.mark.parametrize("special", ["symlink", "fifo"])
def test_saving_refuses_to_replace_a_symlink_or_fifo_at_the_json_path(tmp_path: Path, special: str) -> None:
    victim = _victim(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    if special == "symlink":
        (run / "best.json").symlink_to(victim)
    else:
        os.mkfifo(run / "best.json")
    kind = "a symbolic link" if special == "symlink" else "a FIFO"
    with pytest.raises(OutputError, match=f"checkpoint {re.escape(str(run / 'best.json'))} is {kind}"):
        save_checkpoint(run / "best", _state(), {})
    assert victim.read_text() == "keep me"
    assert (
        (run / "best.json").is_symlink()
        if special == "symlink"
        else stat.S_ISFIFO(os.lstat(run / "best.json").st_mode)
    )
    assert not list(run.glob("*.safetensors"))


def test_a_fifo_given_as_checkpoint_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "best.json")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(tmp_path / "best.json")


def test_a_state_dict_mismatch_names_missing_unexpected_and_misshaped_keys() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = model.state_dict()
    state["9.weight"] = state.pop("1.weight")
    state["0.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError) as err:
        ckpt.load_state_strictly(model, state, "checkpoint x.json (demo)")
    message = str(err.value)
    assert "missing keys '1.weight'" in message and "unexpected keys '9.weight'" in message
    assert "0.bias (5,) saved vs (4,) built" in message and "\n" not in message


def test_a_state_dict_mismatch_lists_the_first_few_keys_and_counts_the_rest() -> None:
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(6)])
    with pytest.raises(
        CheckpointError, match=r"missing keys '0.bias', '0.weight', '1.bias', '1.weight' and 8 more"
    ):
        ckpt.load_state_strictly(model, {}, "checkpoint x.json")
