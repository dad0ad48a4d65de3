"""Which files a piece of code opens, seen through Python's audit hooks (PEP 578), not through mocks.

An audit hook cannot be removed, so one hook is installed on first use and records only while a
`recording_opens` block is active. It sees every ``open`` made from Python (``open``, ``io.open``,
``os.open``, ``Path.open``...), which is where medmeta reads checkpoints and hashes weights.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_active: list[list[str]] = []
_installed = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _active and event == "open" and args and isinstance(args[0], str | bytes | os.PathLike):
        path = os.fsdecode(args[0])
        for sink in _active:
            sink.append(path)


@contextmanager
def recording_opens(sink: list[str]) -> Iterator[list[str]]:
    """Append the path of every file opened inside the block to `sink` (absolute when it was given so)."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    _active.append(sink)
    try:
        yield sink
    finally:
        _active.remove(sink)
