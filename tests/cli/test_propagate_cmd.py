"""``medmeta propagate`` end to end on the real example CT: three labelled axial slices label the volume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests._helpers.cli import assert_one_line_error, run

nib = pytest.importorskip("nibabel", reason="NIfTI needs `pip install 'medmeta[nifti]'`")


@pytest.fixture(scope="module")
def partial(tmp_path_factory: pytest.TempPathFactory, seg_root: Path) -> dict[str, Path]:
    """The example CT, its full label map, and a copy with only axial slices 5, 15 and 25 labelled."""
    base = seg_root / "segmentation" / "totalseg_example"
    full = nib.load(str(base / "example_seg.nii.gz"))
    arr = np.asarray(full.dataobj).astype(np.int16)
    keep = np.zeros_like(arr)
    keep[:, :, [5, 15, 25]] = arr[:, :, [5, 15, 25]]
    root = tmp_path_factory.mktemp("propagate")
    nib.save(nib.Nifti1Image(keep, full.affine), str(root / "partial.nii.gz"))
    return {
        "volume": base / "example_ct_sm.nii.gz",
        "full": base / "example_seg.nii.gz",
        "partial": root / "partial.nii.gz",
    }


def _propagate(capsys: pytest.CaptureFixture[str], files: dict[str, Path], out: Path, *extra: str) -> dict:
    code, _, err = run(
        capsys, "propagate", "--volume", str(files["volume"]), "--labels", str(files["partial"]),
        "--reference", str(files["full"]), "--size", "64", "--out", str(out), *extra,
    )  # fmt: skip
    assert code == 0, err
    return json.loads((out / "summary.json").read_text())


def test_chain_registration_labels_the_volume_better_than_copying_the_nearest_slice(
    capsys: pytest.CaptureFixture[str], partial: dict[str, Path], tmp_path: Path
) -> None:
    chain = _propagate(capsys, partial, tmp_path / "chain", "--steps", "40")
    copy = _propagate(capsys, partial, tmp_path / "copy", "--method", "identity")
    assert chain["labelled_slices"] == [5, 15, 25] and chain["dice"]["slices"] == 27
    assert chain["dice"]["mean"] > copy["dice"]["mean"] + 0.02
    written = nib.load(str(tmp_path / "chain" / "labels.nii.gz"))
    full = np.asarray(nib.load(str(partial["full"])).dataobj).astype(np.int64)
    out = np.asarray(written.dataobj).astype(np.int64)
    assert out.shape == full.shape and np.allclose(written.affine, nib.load(str(partial["full"])).affine)
    assert np.array_equal(out[:, :, [5, 15, 25]], full[:, :, [5, 15, 25]])  # labelled slices kept exactly
    assert out[:, :, 0].any() and out[:, :, 29].any()  # the ends of the volume got labels too


def test_bad_slices_and_shapes_are_one_line_and_leave_no_folder(
    capsys: pytest.CaptureFixture[str], partial: dict[str, Path], tmp_path: Path
) -> None:
    code, _, err = run(
        capsys, "propagate", "--volume", str(partial["volume"]), "--labels", str(partial["partial"]),
        "--slices", "5,40", "--out", str(tmp_path / "a"),
    )  # fmt: skip
    assert_one_line_error(code, err, "--slices [40] outside the volume's 30 slices", "0-29")
    assert not (tmp_path / "a").exists()
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(other))
    code, _, err = run(
        capsys, "propagate", "--volume", str(partial["volume"]), "--labels", str(other),
        "--out", str(tmp_path / "b"),
    )  # fmt: skip
    assert_one_line_error(code, err, "is (4, 4, 4) but the volume is", "the volume's own labels")
    code, _, err = run(
        capsys, "propagate", "--volume", str(partial["volume"]), "--labels", str(partial["partial"]),
        "--strategy", "magic", "--out", str(tmp_path / "c"),
    )  # fmt: skip
    assert_one_line_error(code, err, "unknown strategy 'magic'", "chain, direct, segmentation")
