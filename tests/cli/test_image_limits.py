"""``medmeta adapt / predict`` with images the readers refuse: above the pixel cap, undecodable DICOM."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests._helpers.cli import one_error_line, run
from tests._helpers.images import write_big_png, write_dicom


def support_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c, mean in (("a", 60), ("b", 180)):
        (root / c).mkdir(parents=True)
        for i in range(2):
            pixels = np.clip(rng.normal(mean, 20, (24, 24)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


def test_adapt_refuses_a_13000_pixel_square_png_in_one_line_and_skip_bad_skips_it(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    support = support_folder(tmp_path / "support")
    write_big_png(support / "a" / "big.png", 13000, 13000)
    args = ["adapt", "--model", str(tiny_checkpoint), "--support", str(support), "--out", str(tmp_path / "m")]
    code, _, err = run(capsys, *args)
    line = one_error_line(code, err)
    assert "big.png: 13000x13000 is 169,000,000 pixels, more than the 50,000,000 allowed" in line
    code, out, err = run(capsys, *args, "--skip-bad")
    assert code == 0, err
    assert "adapted protonet to 2 classes: a (2), b (2)" in out


def test_max_pixels_sets_the_cap_of_adapt_and_predict(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    support = support_folder(tmp_path / "support")
    model = tmp_path / "m"
    adapt = ["adapt", "--model", str(tiny_checkpoint), "--support", str(support), "--out", str(model)]
    code, _, err = run(capsys, *adapt, "--max-pixels", "500")
    assert "0.png: 24x24 is 576 pixels, more than the 500 allowed" in one_error_line(code, err)
    code, _, err = run(capsys, *adapt, "--max-pixels", "576")
    assert code == 0, err
    queries = tmp_path / "q"
    queries.mkdir()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(queries / "small.png")
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(queries / "large.png")
    out_csv = tmp_path / "p.csv"
    predict = ["predict", "--model", f"{model}.json", "--images", str(queries), "--out", str(out_csv)]
    code, _, err = run(capsys, *predict, "--max-pixels", "100")
    assert code == 0, err
    assert "large.png: 30x30 is 900 pixels, more than the 100 allowed" in err
    with out_csv.open() as f:
        assert [Path(r["file"]).name for r in csv.DictReader(f)] == ["small.png"]
    code, _, err = run(capsys, *predict[:-1], str(tmp_path / "strict.csv"), "--max-pixels", "100", "--strict")
    assert "large.png: 30x30 is 900 pixels" in one_error_line(code, err)


def test_a_support_dicom_without_its_decoder_is_one_error_line_naming_the_package(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    support = support_folder(tmp_path / "support")
    write_dicom(support / "b" / "ls.dcm", compressed=True)
    args = ["adapt", "--model", str(tiny_checkpoint), "--support", str(support), "--out", str(tmp_path / "m")]
    line = one_error_line(*run(capsys, *args)[::2])
    assert "ls.dcm: its pixels are compressed as JPEG-LS Lossless Image Compression" in line
    assert "run `pip install pylibjpeg pylibjpeg-libjpeg`" in line
