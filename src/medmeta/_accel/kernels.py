"""The C++ CPU kernels of the fused Conv4 block (``csrc/fused_block.cpp``), compiled once per machine.

`medmeta._accel.fused_block` runs batch norm -> ReLU -> max-pool, its backward and its double backward
through these kernels when they are available: one or two passes over the block's memory each, instead of
the dozen PyTorch ops of the pure-PyTorch version (which stays as the fallback and as the reference the
tests compare against). The first use compiles the file with the machine's C++ compiler through
`torch.utils.cpp_extension` (about a minute, cached under ``$TORCH_EXTENSIONS_DIR`` or
``~/.cache/torch_extensions``, rebuilt when the source changes).

Environment: ``MEDMETA_KERNELS=torch`` (or ``off``) never compiles and always uses the PyTorch ops. The
build needs ``ninja`` (the ``accel`` extra: ``pip install medmeta[accel]``) and a C++ compiler; without
ninja, or if compiling fails (no compiler, no Python headers), one warning says so and the PyTorch ops
are used. Compiler flags:
``-O3`` with vectorised inner loops (``-fopenmp-simd``; ``-fno-trapping-math`` lets GCC turn the
comparisons of the ReLU mask and the window maximum into selects) and no contraction into fused
multiply-adds (``-ffp-contract=off``), so every kernel computes ``z`` identically. No ``-march=native``:
the build is cached and may be reused on another CPU of the same machine image.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import warnings
from pathlib import Path
from types import ModuleType

from medmeta._accel import compiled_kernels_allowed

_SOURCE = Path(__file__).parent / "csrc" / "fused_block.cpp"
_FLAGS = ["-O3", "-fopenmp-simd", "-fno-trapping-math", "-ffp-contract=off"]
_LOCK = threading.Lock()
_LOADED: dict[str, ModuleType | None] = {}
log = logging.getLogger(__name__)


def fused_block_kernels() -> ModuleType | None:
    """The compiled module (``forward``, ``backward``, ``double_backward``), or None to use PyTorch ops."""
    if not compiled_kernels_allowed():
        return None
    with _LOCK:
        if "fused_block" not in _LOADED:
            _LOADED["fused_block"] = _compile()
        return _LOADED["fused_block"]


def _ninja_on_path() -> bool:
    """True when torch can run ``ninja``. torch runs it from PATH; when only the ``ninja`` wheel (the
    ``accel`` extra) provides it, its directory is not on PATH unless the venv is activated, so add it."""
    if shutil.which("ninja") is not None:
        return True
    try:
        import ninja
    except ImportError:
        return False
    os.environ["PATH"] = os.pathsep.join([str(ninja.BIN_DIR), os.environ.get("PATH", "")])
    return True


def _compile() -> ModuleType | None:
    import torch

    # a build per source, flags and torch version: an extension built against another torch's headers
    # would not load
    key = _SOURCE.read_bytes() + " ".join([*_FLAGS, torch.__version__]).encode()
    digest = hashlib.sha1(key).hexdigest()[:10]
    name = f"medmeta_fused_block_{digest}"
    try:
        from torch.utils.cpp_extension import load

        if not _ninja_on_path():
            warnings.warn(
                f"medmeta: ninja is not installed, so {_SOURCE.name} is not compiled and second-order MAML "
                "on Conv4 uses the slower PyTorch ops. Run `pip install medmeta[accel]` for the compiled "
                "kernels, or set MEDMETA_KERNELS=torch to skip this check.",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        log.info("compiling medmeta's CPU kernels (%s), once per machine", _SOURCE.name)
        return load(name=name, sources=[str(_SOURCE)], extra_cflags=_FLAGS, verbose=False)
    except Exception as exc:  # no compiler, no ninja, no headers: fall back, once, loudly
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        warnings.warn(
            f"medmeta: could not compile {_SOURCE.name} ({first}); second-order MAML on Conv4 uses the "
            "slower PyTorch ops. Install a C++ compiler and ninja, or set MEDMETA_KERNELS=torch to skip "
            "this attempt.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
