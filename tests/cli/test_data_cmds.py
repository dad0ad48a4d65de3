"""``medmeta data list / info`` on data roots and folders with nothing usable: one error line, exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests._helpers.cli import one_error_line, run


def test_data_list_with_a_missing_data_dir_is_one_error_line_but_a_missing_default_cache_is_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = tmp_path / "nonexistent"
    line = one_error_line(*run(capsys, "data", "list", "--data-dir", str(gone))[::2])
    assert f"data root {gone} (from --data-dir) does not exist" in line
    monkeypatch.delenv("MEDMETA_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "no_cache_yet"))  # nothing downloaded yet
    code, out, err = run(capsys, "data", "list")
    assert code == 0, err
    assert "synthetic" in out


def test_data_list_with_medmeta_data_set_to_a_file_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "f").write_text("")
    monkeypatch.setenv("MEDMETA_DATA", str(tmp_path / "f"))
    line = one_error_line(*run(capsys, "data", "list")[::2])
    assert "(from $MEDMETA_DATA) is not a folder" in line


def test_data_info_on_a_folder_without_one_readable_image_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for c in ("a", "b"):
        (tmp_path / "f" / c).mkdir(parents=True)
        (tmp_path / "f" / c / "x.png").write_bytes(b"not a png")
    Image.fromarray(np.full((4, 4), np.nan, np.float32)).save(tmp_path / "f" / "a" / "nan.tif")
    line = one_error_line(*run(capsys, "data", "info", str(tmp_path / "f"))[::2])
    assert f"no readable image in {tmp_path / 'f'}: all 3 image file(s) failed to decode" in line
    assert "(first: a/nan.tif: every pixel is NaN or infinite)" in line


def test_data_show_refuses_an_existing_png_and_a_symlinked_out_keeping_their_targets(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sentinel = tmp_path / "outside" / "keep.png"
    sentinel.parent.mkdir()
    sentinel.write_bytes(b"keep me")
    link = tmp_path / "link.png"
    link.symlink_to(sentinel)
    code, _, err = run(capsys, "data", "show", "synthetic", "--out", str(link))
    assert "symbolic link" in one_error_line(code, err)
    existing = tmp_path / "episode.png"
    existing.write_bytes(b"mine")
    code, _, err = run(capsys, "data", "show", "synthetic", "--out", str(existing))
    assert "--overwrite" in one_error_line(code, err)
    assert sentinel.read_bytes() == b"keep me" and existing.read_bytes() == b"mine"
    code, _, _ = run(capsys, "data", "show", "synthetic", "--out", str(existing), "--overwrite")
    assert code == 0 and existing.read_bytes()[:4] == b"\x89PNG"
