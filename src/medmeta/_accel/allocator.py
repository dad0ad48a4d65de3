"""Keep freed tensor memory in the process on Linux/glibc instead of handing it back to the kernel.

PyTorch's CPU tensors come straight from ``malloc``. glibc serves blocks above its mmap threshold
(128 KiB, rising with use) with fresh ``mmap`` pages and returns freed heap tops above 128 KiB to the
kernel, so a training loop that frees and re-allocates the same activations every step page-faults
on every first touch of them. `keep_freed_memory` serves blocks up to 32 MiB from the heap and keeps
freed memory (up to 1 GiB), which shortens second-order meta-iterations at the same peak memory
(``benchmarks/maml.py --threads 1 --only second --skip-l2l`` against ``MEDMETA_MALLOC=system``; figures
in ``docs/internals.md``). It is the effect PyTorch's CPU performance guide gets by preloading
jemalloc or tcmalloc, done with glibc's own ``mallopt``.

`keep_freed_memory` is called only by process entry points (the CLI, benchmark workers); it changes
nothing but the allocator's thresholds, once per process, and does nothing off glibc or when
``MEDMETA_MALLOC=system``. Memory freed after a run may stay in the process (up to the trim threshold)
until it exits.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum for a 64-bit build
TRIM_THRESHOLD = 1024 * 1024 * 1024

_state: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when they are in effect."""
    if "done" in _state:
        return _state["done"]
    _state["done"] = False
    if not sys.platform.startswith("linux") or os.environ.get("MEDMETA_MALLOC", "") == "system":
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _state["done"] = ok
    return ok
