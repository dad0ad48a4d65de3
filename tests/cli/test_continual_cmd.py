"""``medmeta continual`` end to end on real images (blood cells, then brain MRI, then breast ultrasound; tiny
budgets), and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._helpers.cli import assert_one_line_error, run

STAGES = [
    "blood_pbc:basophil,eosinophil,platelet",
    "brain_tumor_mri:glioma_tumor,no_tumor",
    "breastmnist_resaved",
]
TINY = ["--image-size", "16", "--test-per-class", "6", "--steps", "3", "--batch-size", "8", "--threads", "1"]
TINY += ["--device", "cpu", "--quiet"]


def _args(data_dir: Path, out: Path, *stages: str) -> list[str]:
    args = ["continual", "--out", str(out), "--data-dir", str(data_dir)]
    for s in stages or STAGES:
        args += ["--stage", s]
    return args + TINY


@pytest.mark.data
def test_three_real_stages_write_the_table_csv_json_and_plot(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = [*_args(data_dir, out), "--shots", "2", "--seed", "0", "--seed", "1", "--buffer", "4"]
    args += ["--buffer-policy", "reservoir", "--buffer-policy", "class_balanced"]
    code, stdout, err = run(capsys, *args)
    assert code == 0, err
    assert "K = 2 shots: accuracy % over the classes seen so far (mean ± 95% CI over 2 seeds)" in stdout
    for name in (
        "naive",
        "replay/reservoir",
        "replay/class_balanced",
        "prototypes",
        "joint",
        "ACC %",
        "BWT %",
    ):
        assert name in stdout, name
    assert "stage 3: breastmnist_resaved: 2 new classes, 546 training images" in stdout
    assert "stage 1: blood_pbc:basophil,eosinophil,platelet: 3 new classes" in stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "continual.csv",
        "continual.json",
        "continual.png",
    ]
    assert (out / "continual.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "continual.json").read_text())
    assert [s["classes"] for s in report["stream"]] == [
        ["blood_pbc/basophil", "blood_pbc/eosinophil", "blood_pbc/platelet"],
        ["brain_tumor_mri/glioma_tumor", "brain_tumor_mri/no_tumor"],
        ["breastmnist_resaved/malignant", "breastmnist_resaved/normal, benign"],
    ]
    assert report["stream"][2]["test_images"] == {"malignant": 6, "normal, benign": 6}
    assert len(report["runs"]) == 2 * 5 and len(report["summary"]) == 5
    for row in report["summary"]:
        assert len(row["stage_accuracy"]) == 3 and row["seeds"] == 2
        assert 0.0 <= row["acc"]["mean"] <= 1.0 and -1.0 <= row["bwt"]["mean"] <= 1.0
    csv_lines = (out / "continual.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 5 * (3 + 3)

    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, "already holds a continual run", "--overwrite")
    code, _, err = run(capsys, *args, "--strategy", "prototypes", "--overwrite")
    assert code == 0, err
    assert [r["strategy"] for r in json.loads((out / "continual.json").read_text())["runs"]] == [
        "prototypes"
    ] * 2


@pytest.mark.data
def test_an_unknown_stage_is_one_error_line(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, *_args(data_dir, tmp_path / "x", STAGES[0], "no_such_set"))
    assert_one_line_error(code, err, "stage 2 (no_such_set): unknown dataset 'no_such_set'", "available:")
    assert not (tmp_path / "x").exists()


@pytest.mark.data
def test_more_shots_than_a_class_has_training_images_is_one_error_line(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, *_args(data_dir, tmp_path / "x"), "--shots", "5", "--shots", "200")
    assert_one_line_error(
        code,
        err,
        "stage 3 (breastmnist_resaved): class 'malignant' has 147 training images, fewer than 200 shots",
    )
    assert not (tmp_path / "x").exists()


def test_a_foreign_non_empty_out_folder_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "scan.png").write_bytes(b"not ours")
    code, _, err = run(
        capsys, "continual", "--out", str(tmp_path), "--stage", "synthetic", "--stage", "synthetic"
    )
    assert_one_line_error(
        code, err, f"--out {tmp_path} holds files medmeta continual did not write (scan.png)"
    )
    assert (tmp_path / "scan.png").read_bytes() == b"not ours"


def test_bad_flags_name_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["continual", "--out", str(tmp_path / "x"), "--stage", "a", "--stage", "b"]
    code, _, err = run(capsys, *base, "--strategy", "ewc")
    assert_one_line_error(code, err, "strategies.0='ewc'")
    code, _, err = run(capsys, *base, "--buffer-policy", "fifo")
    assert_one_line_error(code, err, "replay.policies.0='fifo'")
    code, _, err = run(capsys, "continual", "--out", str(tmp_path / "x"), "--stage", "a")
    assert_one_line_error(code, err, "data.stages", "at least 2")
