"""The practitioner's Python API (`medmeta.adapt` / `medmeta.predict`) never replaces an output silently."""

from __future__ import annotations

from pathlib import Path

import pytest

import medmeta
from medmeta.errors import OutputError
from tests._helpers.deploy import png_folder


def test_adapt_and_predict_refuse_existing_outputs_unless_overwrite(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    support = png_folder(tmp_path / "support")
    medmeta.adapt(tiny_checkpoint, support, out=tmp_path / "a")
    before = (tmp_path / "a.json").read_bytes()
    with pytest.raises(OutputError, match="already exists"):
        medmeta.adapt(tiny_checkpoint, support, out=tmp_path / "a")
    assert (tmp_path / "a.json").read_bytes() == before
    with pytest.raises(OutputError, match="model checkpoint itself"):
        medmeta.adapt(tiny_checkpoint, support, out=tiny_checkpoint, overwrite=True)
    medmeta.adapt(tiny_checkpoint, support, out=tmp_path / "a", overwrite=True)
    assert len(list(tmp_path.glob("a-*.safetensors"))) == 1

    (tmp_path / "p.csv").write_text("mine")
    with pytest.raises(OutputError, match="already exists"):
        medmeta.predict(tmp_path / "a.json", support / "class0", out=tmp_path / "p.csv")
    assert (tmp_path / "p.csv").read_text() == "mine"
    medmeta.predict(tmp_path / "a.json", support / "class0", out=tmp_path / "p.csv", overwrite=True)
    assert (tmp_path / "p.csv").read_text().startswith("file,")


def test_predict_refuses_a_symlinked_csv_and_keeps_its_target(tiny_checkpoint: Path, tmp_path: Path) -> None:
    support = png_folder(tmp_path / "support")
    adapted = medmeta.adapt(tiny_checkpoint, support)
    keep = tmp_path / "sentinel.txt"
    keep.write_text("precious")
    (tmp_path / "p.csv").symlink_to(keep)
    with pytest.raises(OutputError, match="symbolic link"):
        medmeta.predict(adapted, support / "class0", out=tmp_path / "p.csv", overwrite=True)
    assert keep.read_text() == "precious" and (tmp_path / "p.csv").is_symlink()
