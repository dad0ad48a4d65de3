"""Session folders of the web page under real concurrent requests: the limit holds, nothing survives."""

from __future__ import annotations

import http.client
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the web page needs `pip install 'medmeta[serve]'`")
pytest.importorskip("uvicorn", reason="the web page needs `pip install 'medmeta[serve]'`")

from medmeta.serve.app import create_app
from medmeta.serve.session import SessionEnded, SessionStore
from tests._helpers.serve import Reply, png, post_form, running, session_dirs, start_server, support_form

N_REQUESTS = 30


class FolderWatch:
    """Counts session folders under `root` every few milliseconds in a thread; keeps the largest count."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.most = max(self.most, len(session_dirs(self.root)))
            time.sleep(0.002)

    def __enter__(self) -> FolderWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def predict_form() -> tuple[dict[str, str], list[tuple[str, str, bytes]]]:
    fields, files = support_form(shots=2)
    return fields, [*files, ("queries", "q.png", png(60))]


def concurrent_posts(url: str, n: int = N_REQUESTS) -> list[Reply]:
    """`n` cookie-less predictions sent at once from `n` threads."""
    fields, files = predict_form()
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: post_form(url + "/predict", fields, files), range(n)))


def test_concurrent_cookieless_posts_never_hold_more_session_folders_than_the_limit_and_none_after_stop(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    app = create_app(tiny_checkpoint, temp_root=tmp_path)
    limit = app.state.sessions.max_sessions
    with running(app) as url, FolderWatch(tmp_path) as watch:
        replies = concurrent_posts(url)
        after_posts = len(session_dirs(tmp_path))
    statuses = sorted(r.status for r in replies)
    assert watch.most <= limit and after_posts <= limit
    assert set(statuses) <= {200, 503}, [r.text for r in replies if r.status not in (200, 503)]
    for reply in replies:
        if reply.status == 503:
            assert f"already has {limit} sessions in progress" in reply.text
            assert {k.lower(): v for k, v in reply.headers.items()}["retry-after"] == "60"
    assert session_dirs(tmp_path) == []  # the server stopped: every session ended
    assert list(tmp_path.iterdir()) == []


def test_sessions_idle_longer_than_the_timeout_are_deleted_without_another_request(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    app = create_app(tiny_checkpoint, temp_root=tmp_path, idle_seconds=0.5)
    with running(app) as url:
        replies = concurrent_posts(url, 6)
        assert [r.status for r in replies] == [200] * 6  # a busy session is never idle, however long
        assert 0 < len(session_dirs(tmp_path)) <= 6
        deadline = time.monotonic() + 10
        while session_dirs(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert session_dirs(tmp_path) == [] and len(app.state.sessions) == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_server_stopped_by_a_signal_during_requests_leaves_no_session_folder(
    tmp_path: Path, tiny_checkpoint: Path, sig: signal.Signals
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    proc, url = start_server(tiny_checkpoint, temp)
    try:

        def post(_: int) -> int | None:
            try:
                return post_form(url + "predict", *predict_form()).status
            except (OSError, http.client.HTTPException):
                return None  # the server closed the connection while stopping

        with ThreadPoolExecutor(N_REQUESTS) as pool:
            pending = [pool.submit(post, i) for i in range(N_REQUESTS)]
            deadline = time.monotonic() + 30
            while not session_dirs(temp) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert session_dirs(temp), "no request reached the server"
            proc.send_signal(sig)  # while requests are in progress
            proc.communicate(timeout=60)
            statuses = [f.result(timeout=60) for f in pending]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert set(statuses) <= {200, 503, None}
    assert list(temp.iterdir()) == []


def test_a_store_without_room_or_idle_time_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="idle_seconds must be positive, got 0"):
        SessionStore(tmp_path, idle_seconds=0)
    with pytest.raises(ValueError, match="max_sessions must be at least 1, got 0"):
        SessionStore(tmp_path, max_sessions=0)


def test_a_request_of_a_session_ended_meanwhile_is_refused_and_its_folder_stays_deleted(
    tmp_path: Path,
) -> None:
    store = SessionStore(tmp_path)
    with store.use(None) as session:
        store.end(session.token)  # "End session" pressed in another tab while this request runs
        with pytest.raises(SessionEnded, match="this session was ended while the request was processed"):
            session.new_run_folder()
    assert list(tmp_path.iterdir()) == []
