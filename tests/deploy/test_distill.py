"""Distillation end to end on real brain MRI: a tiny adapted teacher teaches a conv4 student, which loads
through the ordinary predict path and exports to ONNX with the same logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medmeta.config.distill import DistillConfig
from medmeta.deploy import adapt, load_adapted, save_adapted
from medmeta.deploy.distill_run import run_distillation
from medmeta.deploy.export import export_onnx, onnx_logits
from medmeta.errors import CheckpointError, OutputError
from tests._helpers.cli import run
from tests._helpers.deploy import BRAIN, brain_files, copy_support, png_folder

SMALL = DistillConfig(steps=6, batch_size=16, views=2, max_images=40, latency_runs=3)


def _test_folder(data_dir: Path, dest: Path, per_class: int = 6) -> Path:
    for cls, files in brain_files(data_dir, "test", per_class).items():
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, dest / cls / f.name)
    return dest


@pytest.mark.data
def test_a_distilled_student_predicts_like_an_adapted_model_and_exports_with_the_same_logits(
    data_dir: Path, tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnx", reason="ONNX export needs `pip install 'medmeta[export]'`")
    pytest.importorskip("onnxruntime", reason="the parity check needs `pip install 'medmeta[export]'`")
    teacher = adapt(
        tiny_checkpoint, copy_support(data_dir, tmp_path / "support", per_class=3), out=tmp_path / "t"
    )
    out = tmp_path / "distilled"
    result, report = run_distillation(
        [tmp_path / "t.json"],
        "conv4",
        data_dir / BRAIN / "train",
        out,
        SMALL,
        test=_test_folder(data_dir, tmp_path / "test"),
        onnx=True,
    )
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith(".safetensors")) == [
        "report.json",
        "student.json",
        "student.onnx",
    ]
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert report["teacher"]["test"]["images"] == report["student"]["test"]["images"] == 24
    assert report["student"]["parameters"] == sum(p.numel() for p in result.student.method.parameters())
    assert report["student"]["onnx_bytes"] == (out / "student.onnx").stat().st_size
    assert report["student"]["latency_ms"] > 0 and report["teacher"]["latency_ms"] > 0
    assert report["distillation"]["views_labelled"] == 2 * (
        40 - report["distillation"]["dropped_test_copies"]
    )

    student = load_adapted(out / "student.json")  # the ordinary loader: predictor rebuilt and verified
    assert student.class_names == teacher.class_names
    assert torch.equal(student.support_images, teacher.support_images)
    assert student.base.meta["distilled_from"]["teachers"][0]["file"] == str(tmp_path / "t.json")
    code, stdout, err = run(
        capsys, "predict", "--model", str(out / "student.json"), "--images", str(tmp_path / "test"),
        "--out", str(tmp_path / "p.csv"),
    )  # fmt: skip
    assert code == 0, err
    assert "predicted 24 image(s)" in stdout

    images = np.random.default_rng(0).integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    expected = student.logits(torch.from_numpy(images)).numpy()
    for path in (out / "student.onnx", export_onnx(student, tmp_path / "again.onnx")):
        got = onnx_logits(path, images)
        assert got.shape == (7, teacher.n_way)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))


@pytest.mark.data
def test_a_second_distillation_into_the_same_folder_needs_overwrite_and_replaces_only_its_files(
    data_dir: Path, tmp_path: Path, tiny_checkpoint: Path
) -> None:
    adapt(tiny_checkpoint, copy_support(data_dir, tmp_path / "support", per_class=2), out=tmp_path / "t")
    out = tmp_path / "distilled"
    cfg = DistillConfig(steps=2, batch_size=8, views=1, max_images=16, latency_runs=2)
    train = data_dir / BRAIN / "train"
    run_distillation([tmp_path / "t.json"], "conv4", train, out, cfg, onnx=True)
    with pytest.raises(OutputError, match="already holds a distilled student"):
        run_distillation([tmp_path / "t.json"], "conv4", train, out, cfg)
    run_distillation(
        [tmp_path / "t.json"], "conv4", train, out, cfg.model_copy(update={"seed": 1}), overwrite=True
    )
    names = sorted(p.name for p in out.iterdir())
    assert "student.onnx" not in names  # the earlier run's ONNX would no longer match the student
    assert len([n for n in names if n.endswith(".safetensors")]) == 1
    assert load_adapted(out / "student.json").base.meta["distilled_from"]["settings"]["seed"] == 1


def test_an_ensemble_teacher_averages_its_members_calibrated_probabilities(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    from medmeta.deploy.distill import load_teachers

    support = png_folder(tmp_path / "support", size=32)
    a, b = (
        adapt(tiny_checkpoint, support, out=tmp_path / "a"),
        adapt(tiny_checkpoint, support, out=tmp_path / "b"),
    )
    b.temperature = 0.25  # b sharper than a: the mixture is not the softmax of the mean logits
    save_adapted(b, tmp_path / "b")
    teachers = load_teachers([tmp_path / "a.json", tmp_path / "b.json"])
    images = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8))
    za, zb = a.logits(images), b.logits(images)
    za, zb = za.double(), zb.double()  # the reference in float64: log of a tiny float32 mean loses digits
    expected = ((torch.softmax(za / a.temperature, -1) + torch.softmax(zb / 0.25, -1)) / 2).log()
    # float32 log-probabilities near -100 carry about 1e-5 relative error; a wrong mixture is off by far more
    torch.testing.assert_close(teachers.log_probs(images).double(), expected, rtol=1e-4, atol=1e-5)


def test_ensemble_members_with_other_classes_are_refused_naming_both(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    from medmeta.deploy.distill import load_teachers

    adapt(tiny_checkpoint, png_folder(tmp_path / "three", size=32), out=tmp_path / "a")
    adapt(tiny_checkpoint, png_folder(tmp_path / "four", classes=4, size=32), out=tmp_path / "b")
    with pytest.raises(CheckpointError, match=r"b.json predicts class0, class1, class2, class3 but .*a.json"):
        load_teachers([tmp_path / "a.json", tmp_path / "b.json"])
