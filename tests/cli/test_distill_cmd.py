"""``medmeta distill``: a run on synthetic image folders, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medmeta.deploy import adapt
from tests._helpers.cli import assert_one_line_error, run
from tests._helpers.deploy import png_folder

FAST = ("--steps", "2", "--batch-size", "4", "--max-images", "8", "--latency-runs", "2")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """An adapted checkpoint (3 synthetic classes of grey PNGs) of the tiny meta-trained ProtoNet."""
    root = tmp_path_factory.mktemp("teacher")
    adapt(tiny_checkpoint, png_folder(root / "support"), out=root / "adapted")
    return root / "adapted.json"


def distill(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return run(capsys, "distill", *args)


def test_distill_writes_a_student_and_a_report_and_says_how_to_export_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, teacher: Path
) -> None:
    images = png_folder(tmp_path / "unlabelled", per_class=4, size=24)
    test = png_folder(tmp_path / "test", per_class=2, size=26)
    out = tmp_path / "out"
    code, stdout, err = distill(
        capsys, "--teacher", str(teacher), "--images", str(images), "--test", str(test), "--out", str(out),
        "--quiet", *FAST,
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["onnx"] is None
    assert report["distillation"]["steps"] == 2
    assert "teacher: 113,088 parameters, accuracy" in stdout
    assert f"medmeta export --model {out / 'student.json'}" in stdout


def test_a_missing_teacher_is_one_line_naming_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = distill(
        capsys,
        "--teacher",
        str(tmp_path / "nope.json"),
        "--images",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(code, err, "--teacher", "nope.json not found", "medmeta adapt")


def test_a_meta_trained_checkpoint_is_refused_as_a_teacher(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_checkpoint: Path
) -> None:
    code, _, err = distill(
        capsys, "--teacher", str(tiny_checkpoint), "--images", str(tmp_path), "--out", str(tmp_path / "o")
    )
    assert_one_line_error(code, err, "not an adapted one", "medmeta adapt --model")


def test_an_unknown_student_spec_is_one_line_listing_the_known_ones(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, teacher: Path
) -> None:
    code, _, err = distill(
        capsys,
        "--teacher",
        str(teacher),
        "--student",
        "conv9",
        "--images",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(code, err, "--student", "unknown backbone 'conv9'", "conv4")
    assert not (tmp_path / "o").exists()  # nothing is created before the whole run is checked
    code, _, err = distill(
        capsys,
        "--teacher",
        str(teacher),
        "--student",
        "pixels",
        "--images",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(code, err, "raw-pixel baseline", "no weights to learn")


def test_an_out_folder_holding_other_files_is_refused_and_left_alone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, teacher: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for extra in ((), ("--overwrite",)):
        code, _, err = distill(
            capsys, "--teacher", str(teacher), "--images", str(tmp_path), "--out", str(out), *extra
        )
        assert_one_line_error(code, err, f"--out {out} holds files distill did not write (notes.txt)")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_test_splits_are_refused_as_unlabelled_images(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, teacher: Path
) -> None:
    code, _, err = distill(
        capsys, "--teacher", str(teacher), "--images", "brain_tumor_mri@test", "--out", str(tmp_path / "o")
    )
    assert_one_line_error(code, err, "brain_tumor_mri@test is a test split", "brain_tumor_mri@train")
    split = tmp_path / "data"
    png_folder(split / "train")
    png_folder(split / "test")
    code, _, err = distill(
        capsys, "--teacher", str(teacher), "--images", str(split), "--out", str(tmp_path / "o")
    )
    assert_one_line_error(code, err, f"--images {split} is split into test, train", str(split / "train"))


def test_a_test_folder_with_classes_the_teacher_does_not_know_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, teacher: Path
) -> None:
    test = png_folder(tmp_path / "test", classes=4, per_class=1)
    code, _, err = distill(
        capsys,
        "--teacher",
        str(teacher),
        "--images",
        str(tmp_path),
        "--test",
        str(test),
        "--out",
        str(tmp_path / "o"),
    )
    assert_one_line_error(code, err, "class(es) class3 that the teacher does not know")
