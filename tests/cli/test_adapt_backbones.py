"""``medmeta adapt --backbone`` beyond library networks: the raw-pixel baseline and a ``medmeta pretrain``
backbone, on real brain MRI, and their one-line errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests._helpers.cli import assert_one_line_error, run

CLASSES = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")


def _support_and_query(data_dir: Path, root: Path, shots: int = 5) -> tuple[Path, Path]:
    brain = data_dir / "classification" / "brain_tumor_mri"
    support, query = root / "support", root / "query"
    for cls in CLASSES:
        (support / cls).mkdir(parents=True)
        (query / cls).mkdir(parents=True)
        for f in sorted((brain / "train" / cls).glob("*.jpg"))[:shots]:
            shutil.copy(f, support / cls / f.name)
        for f in sorted((brain / "test" / cls).glob("*.jpg"))[:3]:
            shutil.copy(f, query / cls / f.name)
    return support, query


@pytest.mark.data
def test_raw_pixels_adapt_and_predict_like_any_model(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    support, query = _support_and_query(data_dir, tmp_path)
    code, out, err = run(
        capsys, "adapt", "--backbone", "pixels:4", "--image-size", "28", "--channels", "1",
        "--support", str(support), "--out", str(tmp_path / "pixels"),
    )  # fmt: skip
    assert code == 0, err
    assert "images read as 1x28x28" in out
    meta = json.loads((tmp_path / "pixels.json").read_text())
    assert meta["meta_trained"] is False and meta["backbone"] == "pixels:4"
    for cls in CLASSES:
        code, _, err = run(
            capsys, "predict", "--model", str(tmp_path / "pixels.json"), "--images", str(query / cls),
            "--out", str(tmp_path / f"{cls}.csv"),
        )  # fmt: skip
        assert code == 0, err
        rows = list(csv.DictReader((tmp_path / f"{cls}.csv").open()))
        assert len(rows) == 3 and all(r["predicted_class"] in CLASSES for r in rows)
    code, _, err = run(
        capsys, "adapt", "--backbone", "pixels", "--support", str(support), "--out", str(tmp_path / "x")
    )
    assert_one_line_error(code, err, "--backbone pixels", "--image-size")
    code, _, err = run(
        capsys, "adapt", "--backbone", "conv4", "--image-size", "28", "--support", str(support),
        "--out", str(tmp_path / "y"),
    )  # fmt: skip
    assert_one_line_error(code, err, "conv4 has no pretrained weights", "--weights RUN/best.json", "pixels")
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()


@pytest.mark.data
def test_a_pretrain_checkpoint_adapts_at_its_own_image_size(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("lightly", reason="lightly is not installed (pip install 'medmeta[ssl]')")
    ssl = tmp_path / "ssl"
    code, _, err = run(
        capsys, "pretrain", "--ssl", "simclr", "--data", "brain_tumor_mri@train", "--backbone", "conv4",
        "--image-size", "20", "--max-images", "32", "--batch-size", "16", "--epochs", "1", "--quiet",
        "--device", "cpu", "--data-dir", str(data_dir), "--out", str(ssl),
    )  # fmt: skip
    assert code == 0, err
    support, _ = _support_and_query(data_dir, tmp_path, shots=2)
    code, out, err = run(
        capsys, "adapt", "--backbone", "conv4", "--weights", str(ssl / "best.json"), "--method", "linear_probe",
        "--support", str(support), "--out", str(tmp_path / "adapted"),
    )  # fmt: skip
    assert code == 0, err
    assert "images read as 3x20x20" in out  # the size the backbone was pretrained at
    meta = json.loads((tmp_path / "adapted.json").read_text())
    assert meta["method"] == "linear_probe" and meta["meta_trained"] is False
