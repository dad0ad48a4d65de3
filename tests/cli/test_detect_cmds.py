"""`medmeta det train|kshot` and `medmeta detect` end to end on real BCCD smears, and their one-line errors."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import pytest
from PIL import Image

from medmeta.data.boxes import read_box_csv, read_boxes, read_coco_json
from tests._helpers.cli import assert_one_line_error, run
from tests._helpers.detection import bccd_root

pytestmark = pytest.mark.data


def _bccd_csv(data_dir: Path, tmp_path: Path, n: int = 8) -> Path:
    """The first `n` BCCD trainval images as a box CSV (image paths absolute)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        anns = read_boxes(bccd_root(data_dir), split="trainval", drop_bad=True)[:n]
    path = tmp_path / "boxes.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "xmin", "ymin", "xmax", "ymax", "label"])
        for a in anns:
            w.writerows(
                [str(a.image), *b, label] for b, label in zip(a.boxes.tolist(), a.labels, strict=True)
            )
    return path


def test_train_adapt_detect_and_kshot_on_real_smears(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    data = _bccd_csv(data_dir, tmp_path)
    run_dir = tmp_path / "run"
    code, out, err = run(
        capsys, "det", "train", "--data", str(data), "--novel", "WBC", "--out", str(run_dir), "--split", "",
        "--test-split", "", "--epochs", "1", "--image-size", "128", "--shots", "1", "--threads", "1", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert "adapted to K = 1: novel AP50" in out
    assert json.loads((run_dir / "base" / "detector.json").read_text())["classes"] == ["Platelets", "RBC"]
    assert json.loads((run_dir / "adapted" / "detector.json").read_text())["classes"] == [
        "Platelets",
        "RBC",
        "WBC",
    ]

    images = tmp_path / "images"
    images.mkdir()
    for a in read_box_csv(data)[:2]:
        shutil.copy(a.image, images / a.image.name)
    code, out, err = run(
        capsys, "detect", "--model", str(run_dir / "adapted"), "--images", str(images), "--out",
        str(tmp_path / "det"), "--min-score", "0", "--threads", "1",
    )  # fmt: skip
    assert code == 0, err
    from_csv = read_box_csv(tmp_path / "det" / "boxes.csv", images)
    from_coco = read_coco_json(tmp_path / "det" / "boxes.coco.json", images)
    assert [a.image.name for a in from_csv] == sorted(p.name for p in images.iterdir())
    assert sum(len(a.labels) for a in from_csv) == sum(len(a.labels) for a in from_coco) > 0
    assert {lab for a in from_csv for lab in a.labels} <= {"Platelets", "RBC", "WBC"}
    assert all(float(a.boxes[:, 2].max()) <= 640 and float(a.boxes[:, 3].max()) <= 480 for a in from_csv)
    overlays = sorted((tmp_path / "det" / "overlays").iterdir())
    assert len(overlays) == 2 and Image.open(overlays[0]).size == (640, 480)

    code, out, err = run(
        capsys, "det", "kshot", "--base", str(run_dir / "base"), "--data", str(data), "--out", str(tmp_path / "k"),
        "--shots", "1", "--draws", "2", "--pool-split", "", "--test-split", "", "--threads", "1",
        "--method", "tfa:steps=30,rpn_steps=10", "--method", "proto:rpn_steps=10",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((tmp_path / "k" / "summary.json").read_text())
    assert [(r["method"], r["shots"], r["draws"]) for r in summary] == [
        ("base_only", 0, 1),
        ("tfa:steps=30,rpn_steps=10", 1, 2),
        ("proto:rpn_steps=10", 1, 2),
    ]
    assert all(0 <= r["base_ap50"] <= 1 for r in summary)
    assert "| proto:rpn_steps=10 | 1 | 2 |" in (tmp_path / "k" / "table.md").read_text()


def test_errors_are_one_line(capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path) -> None:
    data = _bccd_csv(data_dir, tmp_path, n=2)
    code, _, err = run(
        capsys,
        "det",
        "train",
        "--data",
        str(data),
        "--novel",
        "Monocyte",
        "--out",
        str(tmp_path / "r"),
        "--split",
        "",
    )
    assert_one_line_error(code, err, "novel class(es) ['Monocyte'] not in the annotations", "RBC")
    assert not (tmp_path / "r").exists()  # bad input leaves no --out folder behind
    code, _, err = run(
        capsys, "detect", "--model", str(tmp_path), "--images", str(tmp_path), "--out", str(tmp_path / "d")
    )
    assert_one_line_error(code, err, "holds no image file")
    (tmp_path / "x.png").write_bytes(b"")
    code, _, err = run(
        capsys, "detect", "--model", str(tmp_path), "--images", str(tmp_path), "--out", str(tmp_path / "d")
    )
    assert_one_line_error(code, err, "is not a detector checkpoint", "det train")
    assert not (tmp_path / "d").exists()
    code, _, err = run(
        capsys, "det", "kshot", "--base", str(tmp_path), "--data", str(data), "--out", str(tmp_path / "k")
    )
    assert_one_line_error(code, err, "is not a detector checkpoint", "det train")
    assert not (tmp_path / "k").exists()
    code, _, err = run(
        capsys,
        "det",
        "train",
        "--data",
        str(bccd_root(data_dir)),
        "--novel",
        "WBC",
        "--out",
        str(tmp_path / "r2"),
    )
    assert_one_line_error(code, err, "xmax <= xmin", "--drop-bad-boxes")
    assert not (tmp_path / "r2").exists()
