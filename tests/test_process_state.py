"""Importing medmeta and building every method leaves the process alone: no allocator setting, no thread
count change, and with ``MEDMETA_KERNELS=off`` no module of `medmeta._accel` is even imported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: any mallopt call made through ctypes is recorded before medmeta loads.
SCRIPT = textwrap.dedent(
    """
    import ctypes, json, sys

    calls = []

    class Recording(ctypes.CDLL):
        def __getattr__(self, name):
            if name == "mallopt":
                calls.append(name)
            return super().__getattr__(name)

    ctypes.CDLL = Recording
    import torch

    torch.set_num_threads(2)
    import medmeta
    from medmeta.methods import METHODS, build_method
    from medmeta.models.backbones import Conv4

    from medmeta.methods.segmentation import SEG_METHODS

    built = []
    for name in sorted(METHODS):
        method = build_method(name, Conv4(in_channels=1, hidden=4, image_size=16))
        built.append(name)
        if sys.argv[1] == "use":
            from tests._helpers.episodes import make_episode

            method.episode_loss(make_episode(n_way=2, n_shot=1, n_query=2, shape=(1, 16, 16)))
    for name in sorted(SEG_METHODS):
        SEG_METHODS[name].from_options({})
        built.append("seg:" + name)
    print(json.dumps({
        "threads": torch.get_num_threads(),
        "mallopt": calls,
        "accel": sorted(m for m in sys.modules if m.startswith("medmeta._accel.")),
        "built": built,
    }))
    """
)


def _run(mode: str, **env: str) -> dict[str, object]:
    import json

    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_importing_medmeta_and_building_every_method_changes_no_process_state() -> None:
    from medmeta.methods import METHODS
    from medmeta.methods.segmentation import SEG_METHODS

    state = _run("build")
    assert state["built"] == sorted(METHODS) + [f"seg:{n}" for n in sorted(SEG_METHODS)]
    assert state["threads"] == 2
    assert state["mallopt"] == []
    assert state["accel"] == []  # not even imported: construction touches no speed path


@pytest.mark.slow
def test_with_kernels_off_training_every_method_imports_no_speed_path() -> None:
    state = _run("use", MEDMETA_KERNELS="off")
    assert state["threads"] == 2
    assert state["mallopt"] == []
    assert state["accel"] == []
