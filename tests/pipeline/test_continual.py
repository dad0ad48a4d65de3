"""The continual run on synthetic stages: the same seed gives the same numbers, a strategy's numbers do not
depend on the others listed, the backbone starts as `medmeta adapt` resolves it (a train checkpoint, a
pretrain checkpoint, from scratch), and the output folder is only ever one the command owns."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medmeta.config import make_continual_config
from medmeta.data.synthetic import make_synthetic
from medmeta.errors import ConfigError, OutputError
from medmeta.pipeline.continual import check_continual_folder, resolve_start, run_continual
from medmeta.pipeline.continual_report import seed_ci
from medmeta.train.checkpoint import load_checkpoint

NAMES = make_synthetic(image_size=8).class_names
STAGES = [
    "synthetic:" + ",".join(NAMES[:3]),
    "synthetic:" + ",".join(NAMES[12:14]),
    "synthetic:" + NAMES[20] + "," + NAMES[5],
]


def _cfg(**top: Any) -> Any:
    raw: dict[str, Any] = {
        "data": {"stages": STAGES, "shots": [2], "image_size": 16, "test_per_class": 4},
        "train": {"steps": 3, "batch_size": 8, "seeds": [0, 1], "device": "cpu"},
        "replay": {"buffer": 4, "policies": ["reservoir", "class_balanced"]},
    }
    for key, value in top.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return make_continual_config(raw)


def _numbers(out: Path) -> dict[str, Any]:
    runs = json.loads((out / "continual.json").read_text())["runs"]
    return {f"{r['shots']}/{r['seed']}/{r['strategy']}": r["class_accuracy"] for r in runs}


def test_the_same_seeds_give_the_same_numbers_whatever_else_runs(tmp_path: Path) -> None:
    run_continual(_cfg(), out=tmp_path / "a")
    run_continual(_cfg(), out=tmp_path / "b")
    run_continual(
        _cfg(strategies=["joint", "replay"], replay={"policies": ["class_balanced"]}), out=tmp_path / "c"
    )
    a, b, c = _numbers(tmp_path / "a"), _numbers(tmp_path / "b"), _numbers(tmp_path / "c")
    assert a == b
    assert sorted(a) == sorted(
        f"2/{s}/{n}"
        for s in (0, 1)
        for n in ("naive", "replay/reservoir", "replay/class_balanced", "prototypes", "joint")
    )
    assert all(c[key] == a[key] for key in c), "a strategy's numbers depend only on its seed"
    assert a["2/0/naive"] != a["2/1/naive"]
    # at stage 1 naive, replay and joint have seen the same images with the same seed: identical
    assert a["2/0/naive"][0] == a["2/0/joint"][0] == a["2/0/replay/reservoir"][0]
    first = np.array(a["2/0/prototypes"], dtype=float)
    assert np.isnan(first[0, 3:]).all() and not np.isnan(first[-1]).any()
    assert sorted(os.listdir(tmp_path / "a")) == [
        "config.yaml",
        "continual.csv",
        "continual.json",
        "continual.png",
    ]


def test_the_ci_over_seeds_uses_students_t() -> None:
    # mean 0.2, sample sd 0.1, t(0.975, 2) = 4.302653: half-width 4.302653 * 0.1 / sqrt(3)
    mean, ci = seed_ci([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and ci == pytest.approx(0.248414, abs=1e-6)
    assert seed_ci([0.4]) == (0.4, 0.0)


def test_the_csv_holds_every_strategy_stage_and_final_score(tmp_path: Path) -> None:
    run_continual(_cfg(strategies=["naive", "prototypes"]), out=tmp_path)
    header, *rows = list(csv.reader((tmp_path / "continual.csv").read_text().splitlines()))
    assert header == [
        "shots",
        "strategy",
        "metric",
        "stage",
        "stage_name",
        "classes_seen",
        "mean",
        "ci95",
        "seeds",
    ]
    assert rows[0][4] == STAGES[0]  # a spec holding commas stays one field
    assert [(r[1], r[2], r[3], r[5]) for r in rows if r[1] == "naive"] == [
        ("naive", "accuracy", "1", "3"),
        ("naive", "accuracy", "2", "5"),
        ("naive", "accuracy", "3", "7"),
        ("naive", "acc", "3", "7"),
        ("naive", "bwt", "3", "7"),
        ("naive", "forgetting", "3", "7"),
    ]
    assert all(r[-1] == "2" and 0.0 <= float(r[6]) <= 1.0 for r in rows if r[2] == "accuracy")


def test_a_train_checkpoint_starts_every_strategy_at_its_image_size(tiny_checkpoint: Path) -> None:
    start = resolve_start(_cfg(checkpoint=str(tiny_checkpoint), data={"image_size": None}))
    assert start.image_size == 32 and "backbone of" in start.description
    state, _ = load_checkpoint(tiny_checkpoint)
    net = start.build(0)
    saved = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    assert all(torch.equal(net.state_dict()[k], v) for k, v in saved.items())
    assert all(
        torch.equal(a, b)
        for a, b in zip(start.build(1).state_dict().values(), net.state_dict().values(), strict=True)
    )
    with pytest.raises(ConfigError, match="trained on 32 px images, this run asks for 16: drop --image-size"):
        resolve_start(_cfg(checkpoint=str(tiny_checkpoint)))
    with pytest.raises(ConfigError, match="reads 3-channel images, this run 1: pass --channels 3"):
        resolve_start(_cfg(checkpoint=str(tiny_checkpoint), data={"image_size": None, "channels": 1}))


def test_from_scratch_each_seed_starts_from_its_own_weights() -> None:
    start = resolve_start(_cfg())
    assert start.description == "conv4 from scratch" and start.image_size == 16
    a, a_again, b = start.build(0), start.build(0), start.build(1)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), a_again.state_dict().values(), strict=True)
    )
    assert not torch.equal(a.state_dict()["features.0.weight"], b.state_dict()["features.0.weight"])


def test_a_pretrain_checkpoint_starts_the_backbone(tmp_path: Path) -> None:
    pytest.importorskip("lightly", reason="lightly is not installed (pip install 'medmeta[ssl]')")
    from medmeta.config import make_pretrain_config
    from medmeta.pipeline.pretrain import pretrain

    cfg = make_pretrain_config(
        {
            "data": {"domains": ["synthetic"], "image_size": 16, "max_images": 16},
            "ssl": {"batch_size": 8, "steps_per_epoch": 1, "hidden_dim": 8, "output_dim": 4},
            "train": {"epochs": 1, "device": "cpu"},
        }
    )
    pretrain(cfg, out_dir=tmp_path / "ssl")
    weights = tmp_path / "ssl" / "best.json"
    start = resolve_start(
        _cfg(model={"backbone": "conv4", "weights": str(weights)}, data={"image_size": None})
    )
    assert start.image_size == 16 and start.description == f"conv4 from {weights}"
    state, _ = load_checkpoint(weights)
    assert torch.equal(start.build(0).state_dict()["features.0.weight"], state["backbone.features.0.weight"])


def test_a_checkpoint_and_a_backbone_together_are_refused(tiny_checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match="checkpoint and model both name a start"):
        _cfg(checkpoint=str(tiny_checkpoint), model={"backbone": "resnet12"})


def test_the_output_folder_is_new_empty_or_its_own_earlier_run(tmp_path: Path) -> None:
    check_continual_folder(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_continual_folder(tmp_path / "empty")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "continual.json").write_text("{}")
    (mine / ".continual.png.123.tmp").write_text("")
    with pytest.raises(OutputError, match=r"already holds a continual run .*pass --overwrite"):
        check_continual_folder(mine)
    check_continual_folder(mine, overwrite=True)
    (mine / "notes.txt").write_text("mine, not medmeta's")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match=r"holds files medmeta continual did not write \(notes.txt\)"):
            check_continual_folder(mine, overwrite=overwrite)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "empty")
    with pytest.raises(OutputError, match="is not a folder"):
        check_continual_folder(link)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="is not a folder"):
        check_continual_folder(tmp_path / "file")
    target = tmp_path / "elsewhere.json"
    target.write_text("keep")
    (tmp_path / "empty" / "continual.json").symlink_to(target)
    with pytest.raises(OutputError, match="symbolic link"):
        check_continual_folder(tmp_path / "empty", overwrite=True)
    assert target.read_text() == "keep"


def test_a_refused_folder_is_left_untouched(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a hospital's file")
    with pytest.raises(OutputError):
        run_continual(_cfg(), out=tmp_path)
    assert os.listdir(tmp_path) == ["data.csv"] and (tmp_path / "data.csv").read_text() == "a hospital's file"
