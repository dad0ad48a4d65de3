"""``medmeta serve`` from the command line: the address is bound before the page is announced."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the web page needs `pip install 'medmeta[serve]'`")
pytest.importorskip("uvicorn", reason="the web page needs `pip install 'medmeta[serve]'`")


def test_serve_on_a_busy_port_prints_one_error_naming_the_port_and_exits_2_without_announcing(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    cmd = [sys.executable, "-m", "medmeta.cli.main", "serve", "--model", str(tiny_checkpoint), "--port"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = subprocess.run(
            [*cmd, str(port)],
            env={**os.environ, "TMPDIR": str(temp), "COLUMNS": "80"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr
    assert "serving" not in done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"error: port {port} on 127.0.0.1 is already in use (another server?): stop it, or choose a free "
        "port with --port"
    ]
    assert list(temp.iterdir()) == []
