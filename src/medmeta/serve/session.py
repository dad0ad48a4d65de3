"""Per-browser sessions of the web page, each with its own temporary folder, deleted when it ends.

A session starts on the first request without a valid cookie, and ends when the user presses "End
session", after `idle_seconds` without a request, or when the server stops. Uploaded files live only in
the session's folder (created with `tempfile.mkdtemp`, mode 0700); results are kept in memory.

At most `max_sessions` folders exist at any moment, however many requests arrive at once: a session is
created and counted under one lock. When the store is full, the session idle for the longest is ended to
make room; a session with a request in progress is never ended early (neither to make room nor for being
idle), so when every session is busy a new browser is refused (`SessionsFull`, HTTP 503) instead.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from medmeta.errors import MedmetaError

logger = logging.getLogger(__name__)


class SessionsFull(MedmetaError):
    """Every session slot is taken by a request in progress, or the server is stopping (HTTP 503)."""

    status = 503


class SessionEnded(MedmetaError):
    """The session ended ("End session" or server stop) while one of its requests was processed (HTTP 409)."""

    status = 409

    def __init__(self) -> None:
        super().__init__(
            "this session was ended while the request was processed: reload the page and try again"
        )


@dataclass
class Session:
    """One browser's workspace: its folder, last activity and latest results (in memory)."""

    token: str
    folder: Path
    last_seen: float = field(default_factory=time.monotonic)
    csv: str | None = None
    runs: int = 0
    busy: int = 0  # requests in progress
    ended: bool = False

    def new_run_folder(self) -> Path:
        """An empty folder for this run's uploads; the previous run's files are deleted first.

        Raises:
            SessionEnded: the session ended meanwhile (its folder is never created again).
        """
        if self.ended or not self.folder.is_dir():
            raise SessionEnded()
        for child in self.folder.iterdir():
            shutil.rmtree(child, ignore_errors=True)
        self.runs += 1
        run = self.folder / f"run{self.runs}"
        try:
            run.mkdir()  # never `parents=True`: an ended session's folder must stay deleted
        except FileNotFoundError:
            raise SessionEnded() from None
        return run


class SessionStore:
    """Sessions by cookie token; at most `max_sessions` (the one idle the longest is ended first)."""

    def __init__(
        self, temp_root: str | Path | None = None, idle_seconds: float = 1800.0, max_sessions: int = 16
    ):
        if idle_seconds <= 0:
            raise ValueError(f"idle_seconds must be positive, got {idle_seconds}")
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        self.temp_root = None if temp_root is None else str(temp_root)
        if temp_root is not None:
            Path(temp_root).mkdir(parents=True, exist_ok=True)
        self.idle_seconds = idle_seconds
        self.max_sessions = max_sessions
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __len__(self) -> int:
        return len(self._sessions)

    @contextmanager
    def use(self, token: str | None) -> Iterator[Session]:
        """The session of `token`, or a new one, for the length of a request (expired sessions are ended
        first). Until the block exits the session is busy: it is not ended to make room or for being idle.

        Raises:
            SessionsFull: `max_sessions` sessions all have a request in progress, or the store is closed.
        """
        self.sweep()
        with self._lock:
            if self._closed:
                raise SessionsFull("the page is shutting down: start `medmeta serve` again")
            session = self._sessions.get(token or "")
            if session is None:
                session = self._create()
            session.busy += 1
            session.last_seen = time.monotonic()
        try:
            yield session
        finally:
            with self._lock:
                session.busy -= 1
                session.last_seen = time.monotonic()
                if session.ended:  # ended by shutdown while busy: delete whatever the request left
                    shutil.rmtree(session.folder, ignore_errors=True)

    def _create(self) -> Session:
        """A new session and its folder; the caller holds the lock."""
        if len(self._sessions) >= self.max_sessions:
            idle = [s for s in self._sessions.values() if s.busy == 0]
            if not idle:
                raise SessionsFull(
                    f"the page already has {self.max_sessions} sessions in progress: try again in a minute"
                )
            self._end(min(idle, key=lambda s: s.last_seen).token)
        token = secrets.token_urlsafe(24)
        session = Session(token, Path(tempfile.mkdtemp(prefix="medmeta-session-", dir=self.temp_root)))
        self._sessions[token] = session
        logger.info("session started (%d open)", len(self._sessions))
        return session

    def get(self, token: str | None) -> Session | None:
        """The live session of `token`, if any (never creates one)."""
        self.sweep()
        with self._lock:
            session = self._sessions.get(token or "")
            if session is not None:
                session.last_seen = time.monotonic()
            return session

    def end(self, token: str | None) -> None:
        """End a session: delete its folder and results."""
        with self._lock:
            self._end(token or "")

    def _end(self, token: str) -> None:
        session = self._sessions.pop(token, None)
        if session is not None:
            session.ended = True
            shutil.rmtree(session.folder, ignore_errors=True)
            session.csv = None
            logger.info("session ended (%d open)", len(self._sessions))

    def sweep(self) -> None:
        """End sessions idle for longer than `idle_seconds` (a session with a request in progress is not idle)."""
        now = time.monotonic()
        with self._lock:
            for token in [
                t for t, s in self._sessions.items() if s.busy == 0 and now - s.last_seen > self.idle_seconds
            ]:
                self._end(token)

    def close(self) -> None:
        """End every session and refuse new ones (server shutdown)."""
        with self._lock:
            self._closed = True
            for token in list(self._sessions):
                self._end(token)


def hide_paths(message: str, folder: Path) -> str:
    """`message` with every path inside the session's `folder` replaced by "an uploaded file"."""
    for root in {str(folder), str(folder.resolve())}:
        message = re.sub(re.escape(root) + r"[^\s:;'\"]*", "an uploaded file", message)
    return message
