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

from medmeta.serve.uploads import Limits


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


def test_serve_passes_its_pixel_cap_to_the_page_16_megapixels_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medmeta.serve.app
    from medmeta.cli.main import main

    given: list[Limits] = []
    monkeypatch.setattr(medmeta.serve.app, "run_server", lambda *a, limits, **k: given.append(limits))
    for extra in ([], ["--max-pixels", "4000000"]):
        with pytest.raises(SystemExit) as done:
            main(["serve", "--model", str(tmp_path / "m.json"), *extra])
        assert done.value.code == 0
    assert [lim.max_pixels for lim in given] == [16_000_000, 4_000_000]


def test_binding_an_address_of_another_machine_names_it_and_points_to_host() -> None:
    from medmeta.errors import MedmetaError
    from medmeta.serve.app import bind

    with pytest.raises(MedmetaError, match=r"cannot bind 192\.0\.2\.1 port 7860 \(.+\): give an address of"):
        bind("192.0.2.1", 7860)  # TEST-NET-1: never an address of this machine


@pytest.mark.skipif(os.geteuid() == 0, reason="root may bind privileged ports")
def test_binding_a_privileged_port_without_rights_points_to_port() -> None:
    from medmeta.errors import MedmetaError
    from medmeta.serve.app import bind

    with pytest.raises(
        MedmetaError, match=r"no permission to bind port 80 on 127\.0\.0\.1: choose a port above"
    ):
        bind("127.0.0.1", 80)
