"""`medmeta fusion` on real AdrenalMNIST3D volumes: every strategy on the same episodes, the identities
that must hold (raw pixels: early fusion = feature fusion), the paired differences, outputs and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medmeta.data.multiview import views_from_volumes
from medmeta.data.registry import load_dataset
from medmeta.data.transforms import Normalization
from medmeta.models.pixels import RawPixels
from medmeta.pipeline.fusion import compare_fusion
from tests._helpers.cli import assert_one_line_error, run


@pytest.mark.data
def test_every_strategy_runs_on_the_same_real_episodes(data_dir: Path) -> None:
    ds = load_dataset("adrenalmnist3d", root=data_dir, image_size=28, channels=1).select_split("test")
    cases = views_from_volumes(ds)
    norm = Normalization((0.5,) * 3, (0.25,) * 3)
    rows = compare_fusion(
        cases,
        RawPixels(in_channels=3, grid=4),
        channels=3,
        normalization=norm,
        shots=(2,),
        episodes=30,
        n_query=5,
    )
    by = {r.strategy: r for r in rows}
    assert list(by) == ["view:axial", "view:coronal", "view:sagittal", "early", "feature", "late"]
    # 3 grey views as channels through a parameter-free pooling = the three views' pooled pixels side by side
    # (the same Euclidean distances up to the order of coordinates): identical predictions
    assert by["early"].per_episode == by["feature"].per_episode
    best = max((by[f"view:{v}"] for v in cases.views), key=lambda r: r.accuracy[0])
    diff = np.asarray(by["late"].per_episode) - np.asarray(best.per_episode)
    assert by["late"].vs_best_view is not None
    assert np.isclose(by["late"].vs_best_view[0], diff.mean())
    assert all(0.0 <= r.accuracy[0] <= 1.0 and r.episodes == 30 for r in rows)


@pytest.mark.data
def test_the_fusion_command_prints_and_writes_the_table(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fusion"
    code, stdout, err = run(
        capsys, "fusion", "--data", "adrenalmnist3d", "--backbone", "pixels:4", "--image-size", "28",
        "--shots", "2", "--episodes", "10", "--n-query", "4", "--data-dir", str(data_dir), "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "late" in stdout and "view:coronal" in stdout
    payload = json.loads((out / "fusion.json").read_text())
    assert payload["views"] == ["axial", "coronal", "sagittal"] and len(payload["rows"]) == 6
    assert (out / "fusion.csv").read_text().count("\n") == 7

    code, _, err = run(capsys, "fusion", "--data", "adrenalmnist3d", "--backbone", "pixels", "--image-size", "28",
                       "--data-dir", str(data_dir), "--out", str(out))  # fmt: skip
    assert_one_line_error(code, err, "already holds files")
    code, _, err = run(capsys, "fusion", "--data", "adrenalmnist3d", "--data-dir", str(data_dir))
    assert_one_line_error(code, err, "--model CHECKPOINT or --backbone")
    code, _, err = run(capsys, "fusion", "--data", "adrenalmnist3d", "--backbone", "pixels", "--image-size", "28",
                       "--views", "front", "--data-dir", str(data_dir))  # fmt: skip
    assert_one_line_error(code, err, "orthogonal or slices:K")
    code, _, err = run(capsys, "fusion", "--data", "breastmnist_resaved", "--backbone", "pixels", "--image-size", "28",
                       "--data-dir", str(data_dir))  # fmt: skip
    assert_one_line_error(code, err, "not one-channel volumes")
    code, _, err = run(capsys, "fusion", "--data", "adrenalmnist3d", "--backbone", "pixels", "--image-size", "28",
                       "--method", "maml", "--data-dir", str(data_dir))  # fmt: skip
    assert_one_line_error(code, err, "choose one of protonet, linear_probe")
