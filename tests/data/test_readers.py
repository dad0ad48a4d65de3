"""Reading one image: the pixel budget checked before decoding, early shrinking, and refused content."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medmeta.data.folder import load_image_folder
from medmeta.data.readers import ImageTooLargeError, UnreadableImageError, read_image
from medmeta.data.transforms import resize_2d, to_channels_first, to_uint8
from tests._helpers.images import write_big_png, write_dicom

REPO = Path(__file__).resolve().parents[2]


def write_nifti(path: Path, volume: np.ndarray) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), str(path))
    return path


_MEASURE = textwrap.dedent(
    """
    import resource, sys
    from medmeta.data.readers import UnreadableImageError, read_image

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        read_image(sys.argv[1])
        outcome = "decoded"
    except UnreadableImageError as exc:
        outcome = str(exc)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"{grown_mb:.1f}")
    print(outcome)
    """
)


def test_a_png_declaring_more_pixels_than_the_cap_is_refused_before_decoding(tmp_path: Path) -> None:
    big = write_big_png(tmp_path / "big.png", 13000, 13000)  # 169 MP: decoding alone takes 169 MB
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(big)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    grown_mb, outcome = proc.stdout.splitlines()
    assert "13000x13000 is 169,000,000 pixels, more than the 50,000,000 allowed" in outcome
    assert float(grown_mb) < 40, f"reading grew the peak memory by {grown_mb} MB"
    assert "DecompressionBombWarning" not in proc.stderr


def test_the_pixel_cap_is_a_parameter(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(path)
    assert read_image(path, max_pixels=1200).shape == (30, 40)
    with pytest.raises(
        ImageTooLargeError, match=r"40x30 is 1,200 pixels, more than the 1,199 allowed: downscale it"
    ):
        read_image(path, max_pixels=1199)


def test_dicom_and_nifti_sizes_are_checked_from_their_headers(tmp_path: Path) -> None:
    dcm = write_dicom(tmp_path / "a.dcm", np.zeros((30, 40)))
    nii = write_nifti(tmp_path / "v.nii.gz", np.zeros((30, 40, 5)))  # axial slices are 30x40
    for path in (dcm, nii):
        assert read_image(path, max_pixels=1200).shape == (30, 40)
        with pytest.raises(ImageTooLargeError, match="40x30 is"):
            read_image(path, max_pixels=1000)


def test_a_multi_frame_dicom_gives_its_middle_frame(tmp_path: Path) -> None:
    frames = np.stack([np.full((8, 9), v) for v in (1, 2, 3)])
    assert np.all(read_image(write_dicom(tmp_path / "m.dcm", frames)) == 2.0)


def test_a_large_image_is_shrunk_to_about_twice_the_working_size_and_reads_as_before(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:2000, 0:3000]
    smooth = ((xx / 3000 + yy / 2000) * 120).astype(np.uint8)  # 6 MP, above the shrinking threshold
    png = tmp_path / "big.png"
    Image.fromarray(smooth).save(png)
    small = read_image(png, working_size=32)
    assert small.shape == (65, 97)  # factor 2000 // 64 = 31: short side 65, at least 2 x 32
    full = resize_2d(to_channels_first(read_image(png), 1), 32)
    early = resize_2d(to_channels_first(small, 1), 32)
    assert np.abs(full.astype(int) - early.astype(int)).max() <= 2


@pytest.mark.parametrize("kind", ["jpeg", "16-bit png", "float tiff", "rgba png", "la png"])
def test_every_raster_kind_is_shrunk_early(kind: str, tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 1, 2400, dtype=np.float32), (2100, 1))  # 5 MP
    if kind == "jpeg":
        path = tmp_path / "a.jpg"
        Image.fromarray((ramp * 255).astype(np.uint8)).convert("RGB").save(path, quality=95)
    elif kind in ("rgba png", "la png"):
        path = tmp_path / "a.png"
        Image.fromarray((ramp * 255).astype(np.uint8)).convert(kind.split()[0].upper()).save(path)
    elif kind == "16-bit png":
        path = tmp_path / "a.png"
        Image.fromarray((ramp * 60000).astype(np.uint16)).save(path)
    else:
        path = tmp_path / "a.tif"
        Image.fromarray(ramp).save(path)
    arr = read_image(path, working_size=50)
    assert 100 <= min(arr.shape[:2]) < 400, arr.shape
    assert arr.ndim == 2 or arr.shape[2] == 3
    assert read_image(path).shape[:2] == (2100, 2400)
    full = resize_2d(to_channels_first(to_uint8(read_image(path)), 1), 50)
    early = resize_2d(to_channels_first(to_uint8(arr), 1), 50)
    assert np.abs(full.astype(int) - early.astype(int)).mean() < 2


def test_a_small_image_is_read_unchanged_whatever_the_working_size(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    arr = np.random.default_rng(0).integers(0, 255, (1000, 1200), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    assert np.array_equal(read_image(path, working_size=8), arr)


def _jpegls_decoder_installed() -> bool:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    return bool(get_decoder(JPEGLSLossless).is_available)


def test_a_dicom_without_its_pixel_decoder_is_one_line_naming_the_package(tmp_path: Path) -> None:
    if _jpegls_decoder_installed():
        pytest.skip("a JPEG-LS decoder is installed here")
    path = write_dicom(tmp_path / "ls.dcm", compressed=True)
    with pytest.raises(UnreadableImageError) as info:
        read_image(path)
    message = str(info.value)
    assert "\n" not in message
    assert f"cannot read image {path}: its pixels are compressed as JPEG-LS Lossless" in message
    assert "run `pip install pylibjpeg pylibjpeg-libjpeg`" in message


@pytest.mark.parametrize("suffix", [".tif", ".nii.gz"])
def test_an_image_of_nan_is_refused_naming_the_file(suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"nan{suffix}"
    nan = np.full((12, 10), np.nan, np.float32)
    if suffix == ".tif":
        Image.fromarray(nan).save(path)
    else:
        write_nifti(path, np.stack([nan] * 3, axis=-1))
    with pytest.raises(
        UnreadableImageError, match=re.escape(f"cannot read image {path}: every pixel is NaN or infinite")
    ):
        read_image(path)


def test_a_folder_skips_an_image_of_nan_with_skip_bad(tmp_path: Path) -> None:
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / c / "ok.png")
    Image.fromarray(np.full((8, 8), np.nan, np.float32)).save(tmp_path / "a" / "nan.tif")
    with pytest.raises(UnreadableImageError, match=r"nan\.tif: every pixel is NaN.*--skip-bad"):
        load_image_folder(tmp_path, image_size=8)
    ds = load_image_folder(tmp_path, image_size=8, skip_bad=True)
    assert ds.skipped == ("a/nan.tif",) and len(ds) == 2


def test_a_folder_refuses_an_image_above_its_pixel_cap_or_skips_it(tmp_path: Path) -> None:
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / c / "ok.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "b" / "big.png")
    with pytest.raises(ImageTooLargeError, match=r"big\.png: 20x20 is 400 pixels, .* --skip-bad"):
        load_image_folder(tmp_path, image_size=8, max_pixels=100)
    ds = load_image_folder(tmp_path, image_size=8, max_pixels=100, skip_bad=True)
    assert ds.skipped == ("b/big.png",)
