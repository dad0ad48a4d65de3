"""Writing masks back: NIfTI keeps the input's affine and shape, PNG the input's size; overlays."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medmeta.data.segmentation.io import output_stem, support_pairs
from medmeta.deploy.segment import segment_files
from medmeta.errors import DataError
from medmeta.methods.segmentation.baselines import OtsuThreshold, SupportMean


def _volume(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    shape = (33, 34, 5)  # odd sizes catch padding bugs
    data = rng.normal(0, 20, shape).astype(np.int16)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[8:20, 10:24, :] = 3
    data[mask > 0] += 200  # a bright structure, label 3
    affine = np.array([[-0.8, 0.1, 0, 12.5], [0, 0.9, 0.05, -40.0], [0, 0, 2.5, 7.0], [0, 0, 0, 1]])
    img_path, mask_path = tmp_path / "vol.nii.gz", tmp_path / "vol_seg.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(img_path))
    nib.save(nib.Nifti1Image(mask, affine), str(mask_path))
    return img_path, mask_path


def test_a_nifti_mask_written_back_has_the_input_affine_and_shape(tmp_path: Path) -> None:
    img_path, mask_path = _volume(tmp_path)
    written = segment_files(
        OtsuThreshold(), [img_path], [mask_path], [img_path], tmp_path / "out", size=32, label=3
    )
    out = nib.load(str(written[0]))
    ref = nib.load(str(img_path))
    assert written[0].name == "vol_mask.nii.gz" and written[1].name == "vol_overlay.png"
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.affine, ref.affine)
    pred = np.asarray(out.dataobj)
    truth = np.asarray(nib.load(str(mask_path)).dataobj) > 0
    assert set(np.unique(pred)) <= {0, 1}
    assert (2 * (pred.astype(bool) & truth).sum() / (pred.sum() + truth.sum())) > 0.8  # Otsu finds it


def test_real_ct_liver_mask_keeps_the_ct_geometry(seg_root: Path, tmp_path: Path) -> None:
    base = seg_root / "segmentation" / "totalseg_example"
    ct, seg = base / "example_ct_sm.nii.gz", base / "example_seg.nii.gz"
    written = segment_files(SupportMean(), [ct], [seg], [ct], tmp_path, size=32, label=5, max_slices=3)
    out, ref = nib.load(str(written[0])), nib.load(str(ct))
    assert out.shape == ref.shape == (122, 101, 30)
    np.testing.assert_allclose(out.affine, ref.affine)
    assert np.asarray(out.dataobj).any()


def test_a_png_mask_has_the_input_size(seg_root: Path, tmp_path: Path) -> None:
    drive = seg_root / "segmentation" / "drive" / "training"
    image, mask = drive / "images" / "21_training.tif", drive / "1st_manual" / "21_manual1.gif"
    query = drive / "images" / "22_training.tif"
    written = segment_files(OtsuThreshold(), [image], [mask], [query], tmp_path, size=48, channel="green")
    assert [p.name for p in written] == ["22_training_mask.png", "22_training_overlay.png"]
    with Image.open(written[0]) as m, Image.open(written[1]) as o:
        assert m.size == o.size == (565, 584)
        assert set(np.unique(np.asarray(m))) <= {0, 255}
        assert o.mode == "RGB"


def test_support_errors_name_the_files(tmp_path: Path) -> None:
    img_path, mask_path = _volume(tmp_path)
    with pytest.raises(DataError, match="2 support images but 1 support masks"):
        support_pairs([img_path, img_path], [mask_path], size=16)
    with pytest.raises(DataError, match="no slice with >= 20 foreground pixels"):
        support_pairs([img_path], [mask_path], size=16, label=7)
    with pytest.raises(DataError, match="not found"):
        segment_files(SupportMean(), [tmp_path / "nope.png"], [mask_path], [img_path], tmp_path, size=16)
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(png)
    small = tmp_path / "m.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(small)
    with pytest.raises(DataError, match=r"is \(10, 12\) but its mask .* is \(10, 10\)"):
        support_pairs([png], [small], size=16)


def test_output_names_drop_the_whole_suffix() -> None:
    assert output_stem(Path("a/ct.nii.gz")) == "ct" and output_stem(Path("x.y.png")) == "x.y"
