"""Per-browser sessions of the web page, each with its own temporary folder, deleted when it ends.

A session starts on the first request without a valid cookie, and ends when the user presses "End
session", after `idle_seconds` without a request, or when the server stops. Uploaded files live only in
the session's folder (created with `tempfile.mkdtemp`, mode 0700); results are kept in memory.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass
class Session:
    """One browser's workspace: its folder, last activity and latest results (in memory)."""

    token: str
    folder: Path
    last_seen: float = field(default_factory=time.monotonic)
    csv: str | None = None
    runs: int = 0

    def new_run_folder(self) -> Path:
        """An empty folder for this run's uploads; the previous run's files are deleted first."""
        for child in self.folder.iterdir():
            shutil.rmtree(child, ignore_errors=True)
        self.runs += 1
        run = self.folder / f"run{self.runs}"
        run.mkdir()
        return run


class SessionStore:
    """Sessions by cookie token; at most `max_sessions` (the oldest idle one is ended first)."""

    def __init__(
        self, temp_root: str | Path | None = None, idle_seconds: float = 1800.0, max_sessions: int = 16
    ):
        self.temp_root = None if temp_root is None else str(temp_root)
        if temp_root is not None:
            Path(temp_root).mkdir(parents=True, exist_ok=True)
        self.idle_seconds = idle_seconds
        self.max_sessions = max_sessions
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def get_or_create(self, token: str | None) -> Session:
        """The session of `token`, or a new one (expired sessions are ended first)."""
        self.sweep()
        with self._lock:
            session = self._sessions.get(token or "")
            if session is None:
                if len(self._sessions) >= self.max_sessions:
                    oldest = min(self._sessions.values(), key=lambda s: s.last_seen)
                    self._end(oldest.token)
                new_token = secrets.token_urlsafe(24)
                folder = Path(tempfile.mkdtemp(prefix="medmeta-session-", dir=self.temp_root))
                session = Session(new_token, folder)
                self._sessions[new_token] = session
                logger.info("session started (%d open)", len(self._sessions))
            session.last_seen = time.monotonic()
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
            shutil.rmtree(session.folder, ignore_errors=True)
            session.csv = None
            logger.info("session ended (%d open)", len(self._sessions))

    def sweep(self) -> None:
        """End sessions idle for longer than `idle_seconds`."""
        now = time.monotonic()
        with self._lock:
            for token in [t for t, s in self._sessions.items() if now - s.last_seen > self.idle_seconds]:
                self._end(token)

    def close(self) -> None:
        """End every session (server shutdown)."""
        with self._lock:
            for token in list(self._sessions):
                self._end(token)
