"""`register_files` refuses inputs it cannot register, before writing anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medmeta.errors import DataError
from medmeta.pipeline import registration
from medmeta.pipeline.registration import checkerboard, register_files


def png(path: Path, shape: tuple[int, int] = (20, 24)) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)).save(path)
    return path


def nifti(path: Path, shape: tuple[int, int, int]) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros(shape, dtype=np.float32), np.eye(4)), str(path))
    return path


def test_inputs_over_the_size_budget_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registration.MAX_VOXELS, 2, 100)
    with pytest.raises(DataError, match="exceeds 100 voxels: downsample it first"):
        register_files(png(tmp_path / "f.png"), png(tmp_path / "m.png"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_volume_against_an_image_and_volumes_of_two_shapes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="give two 2D images or two volumes"):
        register_files(png(tmp_path / "f.png"), nifti(tmp_path / "m.nii.gz", (8, 8, 8)), tmp_path / "o1")
    with pytest.raises(DataError, match="resample the moving volume onto the fixed grid"):
        register_files(
            nifti(tmp_path / "a.nii.gz", (8, 8, 8)), nifti(tmp_path / "b.nii.gz", (8, 8, 9)), tmp_path / "o2"
        )


def test_a_moving_image_of_another_size_is_resized_to_the_fixed_grid(tmp_path: Path) -> None:
    summary = register_files(
        png(tmp_path / "f.png", (20, 24)),
        png(tmp_path / "m.png", (31, 17)),
        tmp_path / "out",
        method="identity",
    )
    assert summary["shape"] == [20, 24]
    assert np.load(tmp_path / "out" / "field.npy").shape == (2, 20, 24)


def test_checkerboard_alternates_tiles() -> None:
    board = checkerboard(np.zeros((4, 4)), np.ones((4, 4)), tiles=2)
    assert board.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]
