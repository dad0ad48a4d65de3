"""`keep_freed_memory`: applied once on Linux/glibc, skipped when MEDMETA_MALLOC=system."""

from __future__ import annotations

import platform
import sys

import pytest

from medmeta._accel import allocator

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="needs Linux with glibc"
)


@glibc
def test_applied_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_state", {})
    monkeypatch.delenv("MEDMETA_MALLOC", raising=False)
    assert allocator.keep_freed_memory() is True
    assert allocator._state == {"done": True}
    assert allocator.keep_freed_memory() is True  # cached, mallopt not called again


def test_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_state", {})
    monkeypatch.setenv("MEDMETA_MALLOC", "system")
    assert allocator.keep_freed_memory() is False
