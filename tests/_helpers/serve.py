"""Run the web page (in a background thread, or as `medmeta serve`) and talk to it with the standard library."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve `app` on a free loopback port; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
    req = urllib.request.Request(
        url, data=data, headers=headers or {}, method="POST" if data is not None else "GET"
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return Reply(r.status, r.read(), dict(r.headers))
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.read(), dict(e.headers))


def multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """Encode text `fields` and ``(field, filename, content)`` files; returns ``(body, content type)``."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, filename, content in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def multipart_lists(fields: dict[str, list[str]], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """As `multipart`, with repeated text fields (e.g. several ticked checkboxes of one name)."""
    body, ctype = multipart({}, files)
    boundary = ctype.split("boundary=", 1)[1]
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{v}\r\n'.encode()
        for name, values in fields.items()
        for v in values
    )
    return head + body, ctype


def post_form(
    url: str, fields: dict[str, str], files: list[tuple[str, str, bytes]], cookie: str | None = None
) -> Reply:
    body, ctype = multipart(fields, files)
    headers = {"Content-Type": ctype}
    if cookie:
        headers["Cookie"] = cookie
    return request(url, body, headers)


def session_cookie(reply: Reply) -> str:
    raw = reply.headers.get("set-cookie") or reply.headers.get("Set-Cookie") or ""
    return raw.split(";", 1)[0]


def png(value: int, size: int = 24) -> bytes:
    rng = np.random.default_rng(value)
    arr = np.clip(rng.normal(value, 10, (size, size + 5)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def support_form(classes: int = 2, shots: int = 3) -> tuple[dict[str, str], list[tuple[str, str, bytes]]]:
    fields = {f"class_name_{c}": f"kind {c}" for c in range(classes)}
    files = [
        (f"support_{c}", f"c{c}_{i}.png", png(50 + 80 * c + i)) for c in range(classes) for i in range(shots)
    ]
    return fields, files


def session_dirs(root: Path) -> list[Path]:
    return sorted(root.glob("medmeta-session-*"))


def start_server(checkpoint: Path, temp: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {**os.environ, "TMPDIR": str(temp)}
    cmd = [sys.executable, "-m", "medmeta.cli.main", "serve", "--model", str(checkpoint), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"medmeta serve did not start: {proc.communicate()[0]}") from None
            time.sleep(0.2)
