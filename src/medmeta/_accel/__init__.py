"""Optional CPU speed paths for the optimisation-based methods, behind one switch.

Nothing here changes a result's meaning: every path has a pure-PyTorch equivalent that the tests
compare it against. `enabled` is the switch; `medmeta.methods` imports the modules below only inside
branches it has checked, so with ``MEDMETA_KERNELS=off`` none of them is ever imported.

* `fused_block`: batch norm (batch statistics) -> ReLU -> 2x2 max-pool as one op with closed-form first
  and second derivatives, and a functional Conv4 forward built on it (written in PyTorch ops).
* `fused_conv`: a 3x3 convolution whose double backward is written out.
* `kernels`: the C++ CPU kernels of the fused block (``csrc/fused_block.cpp``), compiled once per
  machine; needs a C++ compiler and ``ninja`` (``pip install medmeta[accel]``).
* `allocator`: glibc thresholds that keep freed tensor memory in the process. A process-wide setting:
  only entry points (the CLI, benchmark workers) call it, never a library import or a constructor.

Environment (``MEDMETA_KERNELS``):

* unset (default): the fused Conv4 path, with the compiled kernels where they build;
* ``torch``: the fused Conv4 path in PyTorch ops, never compiling;
* ``off``: no speed path at all: Conv4 runs PyTorch's own modules through ``functional_call``.
"""

from __future__ import annotations

import os

__all__ = ["compiled_kernels_allowed", "enabled"]


def _setting() -> str:
    return os.environ.get("MEDMETA_KERNELS", "").strip().lower()


def enabled() -> bool:
    """The switch: False when ``MEDMETA_KERNELS=off`` asks for PyTorch's own modules only."""
    return _setting() != "off"


def compiled_kernels_allowed() -> bool:
    """True unless ``MEDMETA_KERNELS`` is ``torch`` or ``off`` (then nothing is compiled)."""
    return _setting() not in ("torch", "off")
