"""Without the extra, ``medmeta federated`` stops with one line naming ``medmeta[federated]``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from medmeta._optional import OptionalDependencyError
from medmeta.federated.dp import noise_for
from tests._helpers.cli import one_error_line, run


def test_missing_flwr_is_one_line_naming_the_extra(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "flwr", None)
    code, _, err = run(
        capsys, "federated", "--site", "nowhere_a", "--site", "nowhere_b", "--out", str(tmp_path / "fed")
    )
    line = one_error_line(code, err)
    assert "pip install 'medmeta[federated]'" in line and "flwr" in line
    assert not (tmp_path / "fed").exists()  # refused before anything was written


def test_missing_opacus_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opacus", None)
    monkeypatch.setitem(sys.modules, "opacus.accountants", None)
    monkeypatch.setitem(sys.modules, "opacus.accountants.utils", None)
    with pytest.raises(OptionalDependencyError, match=r"pip install 'medmeta\[federated\]'"):
        noise_for(1.0, 1e-5, 0.01, 10)
