"""A library backbone end to end on real data: ``weights import``, ``train --backbone timm:... --weights NAME``,
``evaluate``, ``adapt`` and ``predict`` from its checkpoint; and the one-line errors around it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medmeta.models.pretrained.registry import recorded_weights
from tests._helpers.cli import assert_one_line_error, run
from tests._helpers.pretrained import write_timm_folder

pytest.importorskip("timm", reason="timm is not installed (pip install 'medmeta[pretrained]')")

TINY = ["--image-size", "32", "--n-way", "3", "--n-shot", "2", "--n-query", "2", "--epochs", "1"]
TINY += ["--episodes-per-epoch", "4", "--eval-episodes", "4", "--quiet", "--device", "cpu"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDMETA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.data
def test_a_timm_backbone_trains_evaluates_adapts_and_predicts_on_real_images(
    data_dir: Path, tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_timm_folder(tmp_path / "weights" / "test_resnet", size=32)
    code, out, err = run(capsys, "weights", "import", str(folder), "--name", "tiny-resnet")
    assert code == 0, err
    assert "model.safetensors  sha256 " in out and (home / "weights" / "tiny-resnet.json").is_file()

    blood, brain = data_dir / "classification" / "blood_pbc", data_dir / "classification" / "brain_tumor_mri"
    run_dir = tmp_path / "run"
    code, _, err = run(
        capsys, "train", "--train", f"{blood}:basophil,eosinophil,erythroblast,ig", "--test",
        f"{blood}:lymphocyte,monocyte,neutrophil", "--method", "protonet", "--backbone", "timm:test_resnet",
        "--weights", "tiny-resnet", "--out", str(run_dir), *TINY,
    )  # fmt: skip
    assert code == 0, err
    meta = json.loads((run_dir / "best.json").read_text())
    record = meta["backbone_record"]
    assert record["spec"] == "timm:test_resnet" and record["source"]["imported_as"] == "tiny-resnet"
    assert (
        record["source"]["sha256"]["model.safetensors"]
        == recorded_weights("tiny-resnet").sha256["model.safetensors"]
    )  # type: ignore[union-attr]
    assert record["preprocessing"]["mean"] == [0.1, 0.2, 0.3] and record["preprocessing"]["size"] == 32

    shutil.rmtree(folder)  # a trained checkpoint needs nothing but itself: timm rebuilds the architecture
    code, stdout, err = run(
        capsys,
        "evaluate",
        "--model",
        str(run_dir / "best.json"),
        "--n-way",
        "3",
        "--episodes",
        "3",
        "--quiet",
    )
    assert code == 0 and "accuracy" in stdout, err

    support, query = tmp_path / "support", tmp_path / "query"
    for cls in ("glioma_tumor", "no_tumor"):
        files = sorted((brain / "train" / cls).glob("*.jpg"))[:3]
        (support / cls).mkdir(parents=True)
        for f in files:
            shutil.copy(f, support / cls / f.name)
        query.mkdir(exist_ok=True)
        shutil.copy(sorted((brain / "test" / cls).glob("*.jpg"))[0], query / f"{cls}.jpg")
    code, _, err = run(
        capsys, "adapt", "--model", str(run_dir / "best.json"), "--support", str(support),
        "--out", str(tmp_path / "adapted"),
    )  # fmt: skip
    assert code == 0, err
    code, _, err = run(
        capsys, "predict", "--model", str(tmp_path / "adapted.json"), "--images", str(query),
        "--out", str(tmp_path / "p.csv"),
    )  # fmt: skip
    assert code == 0, err
    assert len((tmp_path / "p.csv").read_text().strip().splitlines()) == 3  # header + 2 images


def test_library_backbone_mistakes_are_one_line(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    syn = ["--train", "synthetic", "--out"]
    code, _, err = run(capsys, "train", *syn, str(tmp_path / "a"), "--backbone", "resnet99")
    assert_one_line_error(code, err, "unknown backbone 'resnet99'", "timm:ARCH")
    code, _, err = run(
        capsys,
        "train",
        *syn,
        str(tmp_path / "b"),
        "--backbone",
        "timm:test_resnet",
        "--weights",
        "nothing-here",
    )
    assert_one_line_error(code, err, "weights 'nothing-here' is neither", "medmeta weights import")
    assert not (tmp_path / "b").exists()
    pickle = tmp_path / "w.pth"
    pickle.write_bytes(b"not really")
    code, _, err = run(capsys, "weights", "import", str(pickle), "--name", "w")
    assert_one_line_error(code, err, "pickle file", "safetensors")
    folder = write_timm_folder(tmp_path / "f", size=32)
    assert run(capsys, "weights", "import", str(folder), "--name", "w")[0] == 0
    code, _, err = run(capsys, "weights", "import", str(folder), "--name", "w")
    assert_one_line_error(code, err, "already exists", "--overwrite")
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:-1] + b"\0")
    code, _, err = run(
        capsys, "train", *syn, str(tmp_path / "c"), "--backbone", "timm:test_resnet", "--weights", "w"
    )
    assert_one_line_error(code, err, "changed since it was imported")


@pytest.mark.data
def test_adapt_builds_a_model_from_a_pretrained_backbone_alone_and_predicts(
    data_dir: Path, tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The practitioner's shortest path: no meta-training, prototypes of the backbone's frozen features."""
    folder = write_timm_folder(tmp_path / "w", size=32)
    brain = data_dir / "classification" / "brain_tumor_mri"
    support, query = tmp_path / "support", tmp_path / "query"
    query.mkdir()
    for cls in ("glioma_tumor", "pituitary_tumor"):
        (support / cls).mkdir(parents=True)
        for f in sorted((brain / "train" / cls).glob("*.jpg"))[:3]:
            shutil.copy(f, support / cls / f.name)
        shutil.copy(sorted((brain / "test" / cls).glob("*.jpg"))[0], query / f"{cls}.jpg")
    code, out, err = run(
        capsys, "adapt", "--backbone", "timm:test_resnet", "--weights", str(folder), "--channels", "1",
        "--support", str(support), "--out", str(tmp_path / "adapted"),
    )  # fmt: skip
    assert code == 0, err
    assert "images read as 1x32x32" in out  # the weights' own input side
    meta = json.loads((tmp_path / "adapted.json").read_text())
    assert meta["meta_trained"] is False and meta["backbone_record"]["spec"] == "timm:test_resnet"
    shutil.rmtree(folder)  # the adapted checkpoint holds every weight it needs
    code, _, err = run(
        capsys, "predict", "--model", str(tmp_path / "adapted.json"), "--images", str(query),
        "--out", str(tmp_path / "p.csv"),
    )  # fmt: skip
    assert code == 0, err
    assert len((tmp_path / "p.csv").read_text().strip().splitlines()) == 3
    code, _, err = run(
        capsys, "adapt", "--backbone", "timm:test_resnet", "--method", "maml", "--support", str(support),
        "--out", str(tmp_path / "a2"),
    )  # fmt: skip
    assert_one_line_error(code, err, "method 'maml' needs meta-training", "protonet")
    code, _, err = run(capsys, "adapt", "--support", str(support), "--out", str(tmp_path / "a3"))
    assert_one_line_error(code, err, "give either --model CHECKPOINT or --backbone SPEC")
