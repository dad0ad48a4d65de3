"""``medmeta adapt / predict / export`` on real brain MRI images in PNG, JPEG, DICOM and NIfTI, errors, privacy."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests._helpers.cli import assert_one_line_error, run
from tests._helpers.deploy import PATIENT, brain_files, grey, write_dicom, write_nifti

FORMATS = ("png", "jpg", "dcm", "nii.gz")


def write_as(src: Path, dest: Path, fmt: str) -> Path:
    """Write the real image `src` as `dest` (without suffix) in format `fmt`."""
    out = dest.with_name(f"{dest.name}.{fmt}")
    out.parent.mkdir(parents=True, exist_ok=True)
    pixels = grey(src)
    if fmt in ("png", "jpg"):
        Image.fromarray(pixels).save(out, quality=95)
    elif fmt == "dcm":
        write_dicom(pixels, out)
    else:
        write_nifti(pixels, out)
    return out


def real_folders(
    data_dir: Path, tmp_path: Path, fmt: str, shots: int = 3, queries: int = 2
) -> tuple[Path, Path]:
    """Support ``CLASS/*`` and query folders of brain MRI images (2 classes) converted to `fmt`."""
    support, query = tmp_path / "support", tmp_path / "query"
    train = brain_files(data_dir, "train", shots)
    test = brain_files(data_dir, "test", queries)
    for cls in list(train)[:2]:
        for i, f in enumerate(train[cls]):
            write_as(f, support / cls / f"s{i}", fmt)
        for i, f in enumerate(test[cls]):
            write_as(f, query / f"{cls}_q{i}", fmt)
    return support, query


def adapt_cli(
    capsys: pytest.CaptureFixture[str], model: Path, support: Path, out: Path, *extra: str
) -> tuple[int, str, str]:
    """``medmeta adapt --model MODEL --support SUPPORT --out OUT [extra]``: (exit code, stdout, stderr)."""
    return run(capsys, "adapt", "--model", str(model), "--support", str(support), "--out", str(out), *extra)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.data
@pytest.mark.parametrize("fmt", FORMATS)
def test_adapt_and_predict_read_every_supported_format(
    fmt: str, data_dir: Path, tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    support, query = real_folders(data_dir, tmp_path, fmt)
    code, out, err = adapt_cli(capsys, tiny_checkpoint, support, tmp_path / "adapted")
    assert code == 0, err
    assert "adapted protonet to 2 classes: glioma_tumor (3), meningioma_tumor (3)" in out
    csv_path, expl = tmp_path / "p.csv", tmp_path / "explain"
    code, out, err = run(
        capsys,
        "predict",
        "--model",
        str(tmp_path / "adapted.json"),
        "--images",
        str(query),
        "--out",
        str(csv_path),
        "--explain",
        str(expl),
    )
    assert code == 0, err
    rows = read_csv(csv_path)
    assert len(rows) == 4 and all(r["file"].endswith(fmt) for r in rows)
    for r in rows:
        assert r["predicted_class"] in ("glioma_tumor", "meningioma_tumor")
        assert abs(float(r["p_glioma_tumor"]) + float(r["p_meningioma_tumor"]) - 1) < 1e-4
    assert len(list(expl.glob("*.png"))) == 4
    assert "predicted 4 image(s)" in out and "ms per image" in out


@pytest.mark.data
def test_export_writes_an_onnx_model_with_the_same_logits(
    data_dir: Path, tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime", reason="needs `pip install 'medmeta[export]'`")
    import torch

    from medmeta.deploy import load_adapted, load_queries
    from medmeta.deploy.export import onnx_logits

    support, query = real_folders(data_dir, tmp_path, "jpg")
    assert adapt_cli(capsys, tiny_checkpoint, support, tmp_path / "a")[0] == 0
    code, out, err = run(
        capsys, "export", "--model", str(tmp_path / "a.json"), "--out", str(tmp_path / "m.onnx")
    )
    assert code == 0, err
    assert "output 'logits' (N, 2) for glioma_tumor, meningioma_tumor" in out
    model = load_adapted(tmp_path / "a.json")
    images = load_queries([query], image_size=32, channels=3).images
    expected = model.logits(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(
        onnx_logits(tmp_path / "m.onnx", images),
        expected,
        rtol=1e-4,
        atol=1e-4 * float(np.abs(expected).max()),
    )


def test_predict_skips_an_unreadable_image_and_names_it(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests._helpers.deploy import png_folder

    support = png_folder(tmp_path / "s")
    assert adapt_cli(capsys, tiny_checkpoint, support, tmp_path / "a")[0] == 0
    queries = png_folder(tmp_path / "q", per_class=1)
    (queries / "bad.jpg").write_bytes(b"not a jpeg")
    code, out, err = run(
        capsys,
        "predict",
        "--model",
        str(tmp_path / "a.json"),
        "--images",
        str(queries),
        "--out",
        str(tmp_path / "p.csv"),
    )
    assert code == 0, err
    assert "skipped" in err and "bad.jpg" in err
    assert "skipped 1 unreadable file(s)" in out
    assert len(read_csv(tmp_path / "p.csv")) == 3
    code, _out, err = run(
        capsys,
        "predict",
        "--model",
        str(tmp_path / "a.json"),
        "--images",
        str(queries),
        "--out",
        str(tmp_path / "p2.csv"),
        "--strict",
    )
    assert_one_line_error(code, err, "cannot read image", "bad.jpg")


def test_bad_inputs_end_with_one_error_line(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests._helpers.deploy import png_folder

    support = png_folder(tmp_path / "s", per_class=2)
    code, _o, err = adapt_cli(capsys, tiny_checkpoint, support, tmp_path / "a", "--min-shots", "5")
    assert_one_line_error(code, err, "too few readable images", "class0 (2)", "lower --min-shots")
    code, _o, err = adapt_cli(capsys, tiny_checkpoint, tmp_path / "nope", tmp_path / "a")
    assert_one_line_error(code, err, "does not exist")
    code, _o, err = run(capsys, "predict", "--model", str(tiny_checkpoint), "--images", str(support))
    assert_one_line_error(code, err, "not an adapted one", "medmeta adapt")
    assert adapt_cli(capsys, tiny_checkpoint, support, tmp_path / "a")[0] == 0
    (tmp_path / "notes.txt").write_text("x")
    code, _o, err = run(
        capsys,
        "predict",
        "--model",
        str(tmp_path / "a.json"),
        "--images",
        str(tmp_path / "notes.txt"),
        "--out",
        str(tmp_path / "p.csv"),
    )
    assert_one_line_error(code, err, "notes.txt is not an image file")


@pytest.mark.data
def test_dicom_patient_fields_appear_in_no_output_file_or_log(
    data_dir: Path,
    tmp_path: Path,
    tiny_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    support, query = real_folders(data_dir, tmp_path / "in", "dcm")
    bad = query / "broken.dcm"
    bad.write_bytes(
        (query / "glioma_tumor_q0.dcm").read_bytes()[:600]
    )  # header with patient fields, no pixels
    out_dir = tmp_path / "out"
    texts = []
    for args in (
        ("adapt", "--model", str(tiny_checkpoint), "--support", str(support), "--out", str(out_dir / "a")),
        (
            "predict",
            "--model",
            str(out_dir / "a.json"),
            "--images",
            str(query),
            "--out",
            str(out_dir / "p.csv"),
            "--explain",
            str(out_dir / "explain"),
        ),
        ("export", "--model", str(out_dir / "a.json"), "--out", str(out_dir / "m.onnx")),
    ):
        code, out, err = run(capsys, *args)
        assert code == 0, err
        texts += [out, err]
    assert "broken.dcm" in texts[3]  # the unreadable file was reported (by name only)
    texts += [r.getMessage() for r in caplog.records]
    secrets = list(PATIENT.values())
    files = [p for p in out_dir.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".json", ".safetensors", ".csv", ".png", ".onnx"}
    assert (query / "glioma_tumor_q0.dcm").read_bytes().count(
        PATIENT["PatientID"].encode()
    ) == 1  # it is there
    for secret in secrets:
        for p in files:
            assert secret.encode() not in p.read_bytes(), (secret, p)
        for text in texts:
            assert secret not in text, secret
