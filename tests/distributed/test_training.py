"""A short real meta-training (second-order MAML on blood-cell images) under torchrun with 2 gloo ranks:
the same weights as one process, and checkpoints that resume at the other world size.

Runs (one intra-op thread per process; 2 epochs of 2 meta-batches of 4 tasks):

- ``one``: one process, 2 epochs, uninterrupted (the reference);
- ``one_then_two``: one process for 1 epoch, then ``--resume`` under torchrun with 2 ranks to epoch 2;
- ``two_then_one``: torchrun with 2 ranks for 1 epoch, then ``--resume`` in one process to epoch 2.

Float32 training: the ranks' all-reduced meta-gradient differs from one process's only in the order of
float32 additions (test_meta_gradient shows the float64 agreement), so after 4 Adam steps (lr 1e-3):

- every weight agrees within `ATOL` (measured: 3e-7), and every optimiser moment within `RTOL` of its
  tensor's largest value (measured: 3.4e-5);
- except the conv biases that batch norm cancels (`bn_cancelled_biases`): their meta-gradient is zero in
  exact arithmetic, so Adam normalises float32 rounding noise into steps of about ``lr`` (measured: 3e-3
  apart); they change no prediction, which the adapted logits of the `last` checkpoints show (`LOGITS`;
  measured: 5e-6 on logits up to 2.6).
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from medmeta.data.registry import DomainSpec
from medmeta.pipeline import default_normalization, load_method
from medmeta.tasks.sampler import EpisodeSampler
from medmeta.train.checkpoint import load_checkpoint
from tests._helpers.cli import run
from tests._helpers.distributed import torchrun

pytestmark = [pytest.mark.data, pytest.mark.slow]

ATOL = 1e-5
RTOL = 1e-3
LOGITS = 1e-4
CLASSES = "basophil,eosinophil,erythroblast,ig"


def _config(folder: Path, data_dir: Path) -> Path:
    path = folder / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "train": [f"blood_pbc:{CLASSES}"],
                    "image_size": 28,
                    "channels": 1,
                    "data_dir": str(data_dir),
                },
                "episodes": {"n_way": 3, "n_shot": 1, "n_query": 3},
                "method": {"name": "maml", "options": {"n_way": 3, "inner_steps": 1, "inner_lr": 0.4}},
                "train": {
                    "epochs": 2,
                    "episodes_per_epoch": 8,
                    "meta_batch": 4,
                    "val_episodes": 2,
                    "device": "cpu",
                    "seed": 3,
                },
            }
        )
    )
    return path


def _two_ranks(config: Path, out: Path, *extra: str) -> str:
    """`medmeta train` under torchrun with 2 gloo ranks; its stdout (rank 0's output)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = torchrun(
        "-m",
        "medmeta.cli.main",
        "train",
        "--config",
        str(config),
        "--out",
        str(out),
        "--quiet",
        *extra,
        nproc=2,
    )
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _one_process(capsys: pytest.CaptureFixture[str], config: Path, out: Path, *extra: str) -> None:
    code, _out, err = run(capsys, "train", "--config", str(config), "--out", str(out), "--quiet", *extra)
    assert code == 0, err


def bn_cancelled_biases(method: nn.Module) -> set[str]:
    """Names of the conv biases directly followed by batch norm (their gradient is exactly zero)."""
    names: set[str] = set()
    for prefix, module in method.named_modules():
        children = list(module.named_children())
        for (name, a), (_, b) in itertools.pairwise(children):
            if isinstance(a, nn.Conv2d) and a.bias is not None and isinstance(b, nn.BatchNorm2d):
                names.add(f"{prefix}.{name}.bias".lstrip("."))
    return names


def _state(out: Path) -> dict[str, torch.Tensor]:
    state, meta = load_checkpoint(out / "train_state.json")
    assert meta["epochs_done"] == 2
    return {k: v.double() for k, v in state.items() if k.startswith(("model.", "optimizer."))}


def _assert_same_state(
    got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], method: nn.Module
) -> None:
    assert got.keys() == want.keys()
    trained = [n for n, p in method.named_parameters() if p.requires_grad]
    noise = bn_cancelled_biases(method)
    assert noise and len(noise) < len(trained)
    for k in want:
        if k.startswith("model."):
            name = k.removeprefix("model.")
            bound = math.inf if name in noise else ATOL
        else:
            name = trained[int(k.split(".")[1])]
            bound = math.inf if name in noise else RTOL * float(want[k].abs().max())
        diff = float((got[k] - want[k]).abs().max())
        assert diff <= bound, f"{k} ({name}): max |difference| {diff:.3g} > {bound:.3g}"


def _adapted_logits(out: Path, data_dir: Path) -> torch.Tensor:
    """Logits ``(n_query, 3)`` of the `last` checkpoint adapted on one fixed real 3-way episode."""
    method, _, _ = load_method(out / "last.json")
    ds = DomainSpec.parse(f"blood_pbc:{CLASSES}").load(root=data_dir, image_size=28, channels=1)
    episode = EpisodeSampler(ds, 3, 1, 3, seed=11).episode(0).map_images(default_normalization(1))
    with torch.no_grad():
        return method.adapt(episode.support).predict(episode.query_images)


def test_two_ranks_train_as_one_process_and_resume_at_the_other_world_size(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, data_dir)
    _one_process(capsys, config, tmp_path / "one")
    _one_process(capsys, config, tmp_path / "one_then_two", "--epochs", "1")
    said = _two_ranks(config, tmp_path / "one_then_two", "--resume", "--epochs", "2")
    first = _two_ranks(config, tmp_path / "two_then_one", "--epochs", "1")
    _one_process(capsys, config, tmp_path / "two_then_one", "--resume", "--epochs", "2")

    # only rank 0 speaks: one "training" line, naming the processes
    for stdout in (said, first):
        lines = [ln for ln in stdout.splitlines() if ln.startswith("training maml")]
        assert len(lines) == 1 and "on 2 processes" in lines[0], stdout
    method = load_method(tmp_path / "one" / "last.json")[0]
    reference = _state(tmp_path / "one")
    steps = [float(v.reshape(-1)[0]) for k, v in reference.items() if k.endswith(".step")]
    assert steps and all(s == 4 for s in steps)  # 2 epochs x 2 meta-batches: 4 Adam steps
    logits = _adapted_logits(tmp_path / "one", data_dir)
    for resumed in ("one_then_two", "two_then_one"):
        _assert_same_state(_state(tmp_path / resumed), reference, method)
        torch.testing.assert_close(_adapted_logits(tmp_path / resumed, data_dir), logits, rtol=0, atol=LOGITS)
    history = [h["train_loss"] for h in yaml.safe_load((tmp_path / "one" / "history.json").read_text())]
    resumed = [
        h["train_loss"] for h in yaml.safe_load((tmp_path / "two_then_one" / "history.json").read_text())
    ]
    assert resumed == pytest.approx(history, abs=1e-5)
