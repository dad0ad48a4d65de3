"""Run the `medmeta` command in-process and check its one-line errors."""

from __future__ import annotations

import pytest

from medmeta.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err
    assert errors == [ln for ln in err.splitlines() if ln.strip()][-1:], "the error must be the last line"
    for f in fragments:
        assert f in errors[0], f"{f!r} not in {errors[0]!r}"


def one_error_line(code: int, err: str) -> str:
    """The single line on stderr, which must be ``error: ...`` with exit code 2 (nothing else printed)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]
