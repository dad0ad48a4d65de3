"""Full-resolution segmentation: window starts, support patches, and MONAI's blended sliding window on cases
whose answer is known by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medmeta.deploy.sliding import patch_starts, sliding_probability, support_patches
from medmeta.errors import DataError

pytest.importorskip("monai", reason="MONAI is not installed (pip install 'medmeta[monai]')")


class Echo:
    """A predictor whose foreground probability is the window's own pixel intensity."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:  # (n, 1, s, s) -> logits (n, 2, s, s)
        p = x.clamp(1e-4, 1 - 1e-4)
        return torch.cat([torch.log1p(-p), torch.log(p)], dim=1)


class Constant:
    def __init__(self, value: float) -> None:
        self.value = value

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        logit = torch.logit(torch.tensor(self.value))
        return torch.cat([torch.zeros_like(x), torch.full_like(x, float(logit))], dim=1)


def test_window_starts_cover_the_length_with_the_overlap() -> None:
    assert patch_starts(10, 4, 0.5) == [0, 2, 4, 6]
    assert patch_starts(10, 4, 0.25) == [0, 3, 6]
    assert patch_starts(11, 4, 0.0) == [0, 4, 7]  # the last window ends at the edge
    assert patch_starts(5, 8, 0.25) == [0]


def test_blending_identical_window_outputs_gives_them_back_exactly() -> None:
    """Every window returns its own pixels (patch = working size: no resizing), so any weighted blend of the
    overlapping windows is the image itself, borders and corners included."""
    plane = np.random.default_rng(0).uniform(0.05, 0.95, size=(37, 53)).astype(np.float32)
    prob = sliding_probability(Echo(), plane, patch=16, size=16, overlap=0.5)
    assert prob.shape == plane.shape
    np.testing.assert_allclose(prob, plane, atol=1e-4)
    small = sliding_probability(Echo(), plane[:10, :12], patch=16, size=16)  # smaller than one window
    np.testing.assert_allclose(small, plane[:10, :12], atol=1e-4)
    np.testing.assert_allclose(sliding_probability(Constant(0.3), plane, patch=16, size=8), 0.3, atol=1e-5)


def test_support_patches_keep_windows_with_foreground_at_the_working_size() -> None:
    image = np.zeros((40, 40), dtype=np.float32)
    mask = np.zeros((40, 40), dtype=np.float32)
    mask[2:6, 2:6] = 1  # only in the top-left window of 20 px
    xs, ys = support_patches([(image, mask)], patch=20, size=8, overlap=0.0)
    assert xs.shape == (1, 1, 8, 8) and ys.shape == (1, 8, 8) and ys.sum() > 0
    with pytest.raises(DataError, match="use a larger --patch"):
        support_patches([(image, np.zeros_like(mask))], patch=20, size=8)


class EchoSegmenter:
    """A segmenter whose adapted predictor is `Echo` (what `segment_files` needs: ``eval`` and ``adapt``)."""

    def eval(self) -> EchoSegmenter:
        return self

    def adapt(self, support: object) -> Echo:
        return Echo()


def test_a_volume_is_segmented_slice_by_slice_at_its_own_resolution(tmp_path: Path) -> None:
    """Echo's mask is ``intensity >= 0.5`` pixel by pixel, so at native resolution (patch = working size: no
    resizing) every slice's mask is known by hand; whole-slice resizing to 16 px cannot give it."""
    nib = pytest.importorskip("nibabel")
    from medmeta.data.segmentation.io import read_volume
    from medmeta.deploy.segment import segment_files

    rng = np.random.default_rng(0)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    vol, seg = tmp_path / "ct.nii.gz", tmp_path / "ct_seg.nii.gz"
    data = rng.uniform(0, 1, size=(40, 52, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), vol)
    nib.save(nib.Nifti1Image((data > 0.5).astype(np.uint8), affine), seg)
    kw = {"size": 16, "window": "percentile", "max_slices": 2}
    written = segment_files(
        EchoSegmenter(), [vol], [seg], [vol], tmp_path / "full", patch=16, overlap=0.5, **kw
    )  # type: ignore[arg-type]
    out = nib.load(written[0])
    assert out.shape == data.shape and np.allclose(out.affine, affine)
    expected = read_volume(vol, "percentile").data >= 0.5
    got = np.asarray(out.dataobj).astype(bool)
    assert np.array_equal(got, expected)
    whole = segment_files(EchoSegmenter(), [vol], [seg], [vol], tmp_path / "whole", **kw)  # type: ignore[arg-type]
    assert (np.asarray(nib.load(whole[0]).dataobj).astype(bool) != expected).mean() > 0.2


def test_segment_a_real_ct_volume_at_full_resolution(
    capsys: pytest.CaptureFixture[str], seg_root: Path, tmp_path: Path
) -> None:
    nib = pytest.importorskip("nibabel")
    from tests._helpers.cli import run

    ex = seg_root / "segmentation" / "totalseg_example"
    code, _, err = run(
        capsys, "segment", "--model", "otsu", "--support-images", str(ex / "example_ct_sm.nii.gz"),
        "--support-masks", str(ex / "example_seg.nii.gz"), "--label", "5", "--images", str(ex / "example_ct_sm.nii.gz"),
        "--patch", "48", "--out", str(tmp_path / "liver"),
    )  # fmt: skip
    assert code == 0, err
    mask = nib.load(tmp_path / "liver" / "example_ct_sm_mask.nii.gz")
    image = nib.load(ex / "example_ct_sm.nii.gz")
    assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
    assert 0 < np.asarray(mask.dataobj).mean() < 1
