"""Resuming a run (`train_method(..., resume=True)`): the same final weights as an uninterrupted run, and
every way a run folder is refused before training (existing run, foreign files, another config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from medmeta.config import RunConfig, make_config
from medmeta.data.synthetic import make_synthetic
from medmeta.errors import ConfigError, OutputError
from medmeta.pipeline import train_method
from medmeta.train.checkpoint import load_checkpoint
from medmeta.train.keeper import BestKeeper
from medmeta.train.state import resume_training, save_train_state

NAMES = make_synthetic(image_size=8).class_names


def tiny_config(**train: Any) -> RunConfig:
    return make_config(
        {
            "data": {"train": ["synthetic:" + ",".join(NAMES[:6])], "image_size": 16},
            "episodes": {"n_way": 3, "n_shot": 2, "n_query": 2},
            "train": {"epochs": 3, "episodes_per_epoch": 4, "val_episodes": 3, "device": "cpu", **train},
        }
    )


class Epochs:
    """A progress hook that records the epochs run, and interrupts the run as epoch `kill_at` (1-based)
    starts, like Ctrl-C or a kill."""

    def __init__(self, kill_at: int = 0) -> None:
        self.kill_at = kill_at
        self.started: list[str] = []

    def start(self, description: str, total: int) -> None:
        self.started.append(description)
        if description == f"epoch {self.kill_at}/3":
            raise KeyboardInterrupt

    def advance(self, n: int = 1, **info: Any) -> None:
        pass

    def stop(self) -> None:
        pass


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def without_seconds(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_a_run_killed_after_epoch_two_and_resumed_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    cfg = tiny_config(lr_schedule="cosine", weight_decay=1e-3)  # scheduler and Adam state both matter
    whole, whole_result, _ = train_method(cfg, out_dir=tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        train_method(cfg, out_dir=tmp_path / "killed", progress=Epochs(kill_at=3))
    assert len(json.loads((tmp_path / "killed" / "history.json").read_text())) == 2
    epochs = Epochs()
    resumed, resumed_result, _ = train_method(cfg, out_dir=tmp_path / "killed", resume=True, progress=epochs)
    assert epochs.started == ["epoch 3/3"]  # continued, not started again
    assert_same_weights(whole.state_dict(), resumed.state_dict())
    for name in ("last.json", "best.json"):
        assert_same_weights(
            load_checkpoint(tmp_path / "whole" / name)[0], load_checkpoint(tmp_path / "killed" / name)[0]
        )
    assert without_seconds(resumed_result.history) == without_seconds(whole_result.history)
    assert resumed_result.best_score == whole_result.best_score


def test_more_epochs_on_resume_equal_training_that_long_from_the_start(tmp_path: Path) -> None:
    whole, _, _ = train_method(tiny_config(epochs=3), out_dir=tmp_path / "whole")
    train_method(tiny_config(epochs=2), out_dir=tmp_path / "grown")
    epochs = Epochs()
    grown, result, _ = train_method(
        tiny_config(epochs=3), out_dir=tmp_path / "grown", resume=True, progress=epochs
    )
    assert epochs.started == ["epoch 3/3"]
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert_same_weights(
        load_checkpoint(tmp_path / "whole" / "last.json")[0],
        load_checkpoint(tmp_path / "grown" / "last.json")[0],
    )
    assert_same_weights(whole.state_dict(), grown.state_dict())


def test_the_training_state_restores_torch_rng_optimizer_and_history(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    keeper = BestKeeper(tmp_path, {"config": {"train": {"epochs": 1}}})
    keeper.end_epoch(model, 0, {"epoch": 1, "train_loss": 0.5}, 0.75)
    save_train_state(
        tmp_path, model=model, optimizer=opt, scheduler=None, scaler=None, keeper=keeper, meta={}
    )
    expected = torch.rand(5)  # the draws after the saved state
    saved_opt = opt.state_dict()

    fresh = nn.Linear(3, 2)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.01)
    fresh_keeper = BestKeeper(tmp_path, {})
    done = resume_training(
        tmp_path,
        model=fresh,
        optimizer=fresh_opt,
        scheduler=None,
        scaler=None,
        keeper=fresh_keeper,
        cfg=tiny_config().train,
        meta={},
    )
    assert done == 1
    assert torch.equal(torch.rand(5), expected)
    assert_same_weights(model.state_dict(), fresh.state_dict())
    for index, entries in saved_opt["state"].items():
        for name, value in entries.items():
            assert torch.equal(fresh_opt.state_dict()["state"][index][name], value), name
    assert fresh_keeper.history == [{"epoch": 1, "train_loss": 0.5}]
    assert fresh_keeper.best == 0.75 and fresh_keeper.best_epoch == 1


def test_an_existing_run_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    train_method(tiny_config(epochs=1), out_dir=tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(OutputError, match=r"--resume .* --overwrite"):
        train_method(tiny_config(epochs=1), out_dir=tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_resume_with_another_config_is_refused_before_anything_changes(tmp_path: Path) -> None:
    train_method(tiny_config(epochs=1), out_dir=tmp_path)
    (tmp_path / "results.json").write_text("[]")  # as the CLI leaves it
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.001 -> 0\.01"):
        train_method(tiny_config(epochs=2, lr=0.01), out_dir=tmp_path, resume=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_resume_removes_the_stale_results_of_the_earlier_weights(tmp_path: Path) -> None:
    train_method(tiny_config(epochs=1), out_dir=tmp_path)
    (tmp_path / "results.json").write_text("[]")
    train_method(tiny_config(epochs=2), out_dir=tmp_path, resume=True)
    assert not (tmp_path / "results.json").exists()


def test_overwrite_removes_only_medmeta_files_and_never_follows_a_link_out(tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    run = tmp_path / "run"
    train_method(tiny_config(epochs=1), out_dir=run)
    (run / "notes.txt").symlink_to(sentinel)
    with pytest.raises(OutputError, match=r"notes\.txt"):
        train_method(tiny_config(epochs=1), out_dir=run, overwrite=True)
    assert sentinel.read_text() == "keep me" and (run / "notes.txt").is_symlink()
    assert (run / "best.json").is_file()
    (run / "notes.txt").unlink()
    (run / "results.json").write_text("[]")
    train_method(tiny_config(epochs=1, lr=0.01), out_dir=run, overwrite=True)
    assert not (run / "results.json").exists()
    assert load_checkpoint(run / "best.json")[1]["config"]["train"]["lr"] == 0.01
    assert len(list(run.glob("best-*.safetensors"))) == 1
    assert sentinel.read_text() == "keep me"


def test_resume_of_a_folder_without_training_state_is_refused(tmp_path: Path) -> None:
    train_method(tiny_config(epochs=1), out_dir=tmp_path)
    for p in tmp_path.glob("train_state*"):
        p.unlink()
    with pytest.raises(OutputError, match="no training state"):
        train_method(tiny_config(epochs=2), out_dir=tmp_path, resume=True)


def test_a_run_that_is_never_resumed_writes_no_training_state_and_the_same_weights(tmp_path: Path) -> None:
    cfg = tiny_config()
    kept, _, _ = train_method(cfg, out_dir=tmp_path / "kept")
    lean, _, _ = train_method(cfg, out_dir=tmp_path / "lean", resumable=False)
    assert (tmp_path / "kept" / "train_state.json").is_file()
    assert not list((tmp_path / "lean").glob("train_state*"))
    assert_same_weights(kept.state_dict(), lean.state_dict())
