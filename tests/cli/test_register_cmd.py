"""``medmeta register`` end to end on real images (brain MRI slices, CT slices written as PNG and as NIfTI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medmeta.data.deformations import random_smooth_field, warp
from tests._helpers.cli import assert_one_line_error, run


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory: pytest.TempPathFactory, seg_root: Path) -> dict[str, Path]:
    """A real CT slice (moving) and the slice deformed by a known field (fixed), with their label maps."""
    from medmeta.data.registration import load_volume_pool

    pool = load_volume_pool(seg_root, "ct", 64)
    moving, labels = pool.images[15:16], pool.labels[15:16][:, None].float()  # type: ignore[index]
    flow = random_smooth_field((64, 64), magnitude=2.0, generator=torch.Generator().manual_seed(1))
    fixed, fixed_labels = warp(moving, flow), warp(labels, flow, mode="nearest")
    root = tmp_path_factory.mktemp("ct")
    files = {
        "moving": moving[0, 0],
        "fixed": fixed[0, 0],
        "labels": labels[0, 0],
        "fixed_labels": fixed_labels[0, 0],
    }
    out = {}
    for name, arr in files.items():
        path = root / f"{name}.png"
        scale = 1 if "labels" in name else 255
        Image.fromarray(np.rint(arr.numpy() * scale).astype(np.uint8)).save(path)
        out[name] = path
    return out


def test_register_writes_the_warped_image_field_pictures_and_improves_label_dice(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, ct_files: dict[str, Path]
) -> None:
    out = tmp_path / "reg"
    code, stdout, err = run(
        capsys,
        "register",
        "--fixed", str(ct_files["fixed"]),
        "--moving", str(ct_files["moving"]),
        "--labels", str(ct_files["labels"]),
        "--fixed-labels", str(ct_files["fixed_labels"]),
        "--out", str(out),
        "--method", "demons",
    )  # fmt: skip
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    assert names == {
        "warped.png",
        "field.npy",
        "checkerboard.png",
        "overlay.png",
        "warped_labels.png",
        "summary.json",
    }
    field = np.load(out / "field.npy")
    assert field.shape == (2, 64, 64) and np.isfinite(field).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dice"] > summary["dice_before"] + 0.1, summary
    assert summary["folding_fraction"] < 0.01
    assert "label Dice" in stdout
    assert Image.open(out / "overlay.png").size == (64, 64)


def test_register_registers_nifti_volumes_in_3d(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, seg_root: Path
) -> None:
    import nibabel as nib

    src = nib.load(str(seg_root / "segmentation" / "totalseg_example" / "example_ct_sm.nii.gz"))
    vol = np.asarray(src.dataobj, dtype=np.float32)[20:60, 20:60, 5:25]  # (40, 40, 20)
    shifted = np.roll(vol, 2, axis=0)
    for name, arr in (("fixed", shifted), ("moving", vol)):
        nib.save(nib.Nifti1Image(arr, src.affine), str(tmp_path / f"{name}.nii.gz"))
    out = tmp_path / "reg3d"
    code, _, err = run(
        capsys,
        "register",
        "--fixed", str(tmp_path / "fixed.nii.gz"),
        "--moving", str(tmp_path / "moving.nii.gz"),
        "--out", str(out),
        "--steps", "40",
    )  # fmt: skip
    assert code == 0, err
    field = np.load(out / "field.npy")
    assert field.shape == (3, 40, 40, 20)
    assert nib.load(str(out / "warped.nii.gz")).shape == (40, 40, 20)
    inner = field[0, 8:-8, 8:-8, 4:-4]
    assert -2.5 < float(np.median(inner)) < -1.0  # fixed(x) = moving(x - 2) along axis 0


def test_register_errors_are_one_line_and_say_what_to_do(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, ct_files: dict[str, Path]
) -> None:
    base = ("register", "--fixed", str(ct_files["fixed"]), "--moving", str(ct_files["moving"]))
    code, _, err = run(capsys, *base, "--out", str(tmp_path / "a"), "--method", "magic")
    assert_one_line_error(code, err, "unknown registration method 'magic'", "demons")
    code, _, err = run(capsys, *base, "--out", str(tmp_path / "b"), "--fixed-labels", str(ct_files["labels"]))
    assert_one_line_error(code, err, "pass --labels too")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("x")
    code, _, err = run(capsys, *base, "--out", str(tmp_path / "c"), "--method", "identity")
    assert_one_line_error(code, err, "--overwrite")
    code, _, err = run(
        capsys,
        "register",
        "--fixed",
        str(tmp_path / "none.png"),
        "--moving",
        str(ct_files["moving"]),
        "--out",
        str(tmp_path / "d"),
    )
    assert_one_line_error(code, err, "is not a file")
