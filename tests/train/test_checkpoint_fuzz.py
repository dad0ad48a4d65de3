"""Fuzz over checkpoint JSON: whatever the description says, loading stays inside the checkpoint's folder
and fails, if it fails, with the one-line `CheckpointError` (issue 16).

Each case edits a real checkpoint (a field deleted, its type changed, a path-like or huge value put in),
then loads it twice: as edited (the description checksum must catch it) and re-signed, as a hostile
writer who recomputes the checksums would leave it (every later check must hold on its own).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from medmeta.deploy import adapt, load_model
from medmeta.errors import CheckpointError
from medmeta.train import checkpoint as ckpt
from tests._helpers.audit import recording_opens
from tests._helpers.deploy import png_folder

CASES = int(os.environ.get("MEDMETA_FUZZ_CASES", "120"))


def _values(outside: Path, rng: random.Random) -> list[Any]:
    """Replacement values: other types, path-like strings, huge and deeply nested values."""
    return [
        None,
        0,
        -1,
        10**30,
        1e308,
        float("nan"),
        True,
        "",
        "x" * 100_000,
        [],
        {},
        [1, "a", None],
        {"a": {"b": [1, 2, {"c": None}]}},
        str(outside / "victim.txt"),
        "../outside/victim.txt",
        "../outside/best-0123abcd.safetensors",
        str(outside / "best-0123abcd.safetensors"),
        "/etc/passwd",
        "sub/best-0123abcd.safetensors",
        "link-89abcdef.safetensors",
        "best-0123abcd.safetensors\x00.json",
        list(range(rng.randint(0, 5000))),
        [[3, 10**9, 10**9]],
    ]


def _mutate(record: dict[str, Any], outside: Path, rng: random.Random) -> dict[str, Any]:
    edited = json.loads(json.dumps(record))
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(sorted(edited))
        target, leaf = edited, key
        while isinstance(target[leaf], dict) and target[leaf] and rng.random() < 0.6:
            target, leaf = target[leaf], rng.choice(sorted(target[leaf]))
        if rng.random() < 0.25:
            del target[leaf]
        else:
            target[leaf] = rng.choice(_values(outside, rng))
    return edited


def _write(path: Path, record: dict[str, Any], rng: random.Random) -> None:
    text = json.dumps(record)
    if rng.random() < 0.05:  # deeper nesting than any JSON parser's recursion allows
        text = text[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path.write_text(text)


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A meta-trained and an adapted checkpoint, each alone in its folder."""
    root = tmp_path_factory.mktemp("fuzz_sources")
    trained = root / "trained"
    trained.mkdir()
    record = json.loads(tiny_checkpoint.read_text())
    shutil.copy(tiny_checkpoint, trained / "best.json")
    shutil.copy(tiny_checkpoint.parent / record["weights"], trained / record["weights"])
    adapt(tiny_checkpoint, png_folder(root / "support"), out=root / "adapted" / "adapted")
    return {"trained": trained / "best.json", "adapted": root / "adapted" / "adapted.json"}


@pytest.mark.parametrize("kind", ["trained", "adapted"])
@pytest.mark.parametrize("resign", [False, True], ids=["as-edited", "re-signed"])
def test_loading_a_fuzzed_checkpoint_stays_in_its_folder_and_fails_with_one_line(
    tmp_path: Path, checkpoints: dict[str, Path], kind: str, resign: bool
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("keep me")
    ckpt.save_checkpoint(outside / "best", {"w": torch.ones(2)}, {})
    foreign = next(outside.glob("best-*.safetensors"))
    foreign.rename(outside / "best-0123abcd.safetensors")
    source = checkpoints[kind]
    record = json.loads(source.read_text())
    rng = random.Random(f"{kind}-{resign}")
    outcomes: dict[str, int] = {}
    for case in range(CASES):
        folder = tmp_path / f"case{case}"
        folder.mkdir()
        shutil.copy(source.parent / record["weights"], folder / record["weights"])
        os.symlink(outside / "best-0123abcd.safetensors", folder / "link-89abcdef.safetensors")
        edited = _mutate(record, outside, rng)
        if resign:
            edited = ckpt.sign(edited)
        path = folder / source.name
        _write(path, edited, rng)
        opened: list[str] = []
        load: Callable[[Path], object] = load_model
        try:
            with recording_opens(opened):
                load(path)
            outcomes["loaded"] = outcomes.get("loaded", 0) + 1
        except CheckpointError as exc:
            one_line = "\n" not in str(exc) and len(str(exc)) < 1_000
            assert one_line, f"case {case}: {str(exc)[:300]}"
            outcomes["refused"] = outcomes.get("refused", 0) + 1
        except Exception as exc:  # pragma: no cover - a failure is reported with the case that caused it
            pytest.fail(f"case {case}: {type(exc).__name__}: {str(exc)[:300]} (edited: {str(edited)[:300]})")
        inside = folder.resolve()
        strays = [p for p in opened if not Path(p).resolve().is_relative_to(inside)]
        assert not strays, (case, strays)
        assert (outside / "victim.txt").read_text() == "keep me"
    assert outcomes.get("refused", 0) > 0
    if not resign:
        assert outcomes.get("loaded", 0) == 0, outcomes
