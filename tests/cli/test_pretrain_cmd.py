"""``medmeta pretrain`` end to end on real images, resuming, the checkpoint as ``train --weights``, and its
one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medmeta.config import load_config
from medmeta.pipeline import build_method_from_config
from medmeta.pipeline.classification import read_pretrained_start
from medmeta.train.checkpoint import load_checkpoint
from tests._helpers.cli import assert_one_line_error, run

pytest.importorskip("lightly", reason="lightly is not installed (pip install 'medmeta[ssl]')")

TINY = ["--image-size", "16", "--max-images", "48", "--batch-size", "16", "--quiet", "--device", "cpu"]


@pytest.mark.data
@pytest.mark.slow
def test_pretrain_on_two_pooled_domains_then_train_from_the_checkpoint(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ssl = tmp_path / "ssl"
    args = ["pretrain", "--ssl", "simclr", "--data", "blood_pbc", "--data", "brain_tumor_mri@train"]
    args += ["--backbone", "conv4", "--out", str(ssl), "--data-dir", str(data_dir), *TINY]
    code, out, err = run(capsys, *args, "--epochs", "1")
    assert code == 0, err
    meta = json.loads((ssl / "best.json").read_text())
    assert meta["kind"] == "pretrain" and meta["epoch"] == 1
    assert set(meta["images_per_domain"]) == {"blood_pbc", "brain_tumor_mri"}
    assert sum(meta["images_per_domain"].values()) == 48
    assert "--weights" in out

    code, _, err = run(capsys, *args, "--epochs", "1")
    assert_one_line_error(code, err, "already holds a run", "--resume")
    code, _, err = run(capsys, *args, "--epochs", "2", "--resume")
    assert code == 0, err
    assert [r["epoch"] for r in json.loads((ssl / "history.json").read_text())] == [1, 2]

    run_dir = tmp_path / "fewshot"
    code, _, err = run(
        capsys,
        "train",
        "--train",
        "blood_pbc:basophil,eosinophil,erythroblast,ig,lymphocyte",
        "--test",
        "blood_pbc:monocyte,neutrophil,platelet",
        "--backbone",
        "conv4",
        "--weights",
        str(ssl / "best.json"),
        "--data-dir",
        str(data_dir),
        "--out",
        str(run_dir),
        "--image-size",
        "16",
        "--n-way",
        "3",
        "--n-shot",
        "1",
        "--n-query",
        "2",
        "--epochs",
        "1",
        "--episodes-per-epoch",
        "2",
        "--eval-episodes",
        "2",
        "--quiet",
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert load_checkpoint(run_dir / "best.json")[1]["backbone_start"]["checkpoint"] == str(ssl / "best.json")
    cfg = load_config(run_dir / "config.yaml")
    initial = build_method_from_config(
        cfg, channels=3, spatial_dims=2, start=read_pretrained_start(cfg.model.weights)
    )
    state, _ = load_checkpoint(ssl / "best.json")
    for k, v in initial.backbone.state_dict().items():
        assert torch.equal(v, state[f"backbone.{k}"]), k


def test_a_bad_ssl_method_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "pretrain", "--ssl", "swav", "--out", str(tmp_path / "o"), *TINY)
    assert_one_line_error(code, err, "ssl.method='swav'", "'simclr'")
    assert not (tmp_path / "o").exists()


def test_a_missing_domain_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys,
        "pretrain",
        "--data",
        "nosuchset",
        "--data-dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        *TINY,
    )
    assert_one_line_error(code, err, "unknown dataset 'nosuchset'", "available:")


@pytest.mark.data
def test_volumes_are_one_line(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys,
        "pretrain",
        "--data",
        "adrenalmnist3d",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path / "o"),
        *TINY,
    )
    assert_one_line_error(code, err, "3-D volumes", "2-D")
