"""Image folders: every supported format, grey/RGB/16-bit, and every bad-input case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medmeta.data.folder import load_image_folder
from medmeta.data.readers import UnreadableImageError, read_image
from medmeta.errors import DataError


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def write_dicom(path: Path, pixels: np.ndarray, patient: str = "DOE^JANE") -> Path:
    """A minimal valid DICOM file (16-bit grey) with patient fields set."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient
    ds.PatientID = "ID-12345"
    ds.PatientBirthDate = "19700101"
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def write_nifti(path: Path, volume: np.ndarray) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), str(path))
    return path


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "set"
    _png(root / "a" / "grey.png", rng.integers(0, 255, (40, 50), dtype=np.uint8))
    _png(root / "a" / "rgb.jpg", rng.integers(0, 255, (30, 30, 3), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 4000, (32, 32)).astype(np.uint16)).save(root / "a" / "deep.png")
    _png(root / "b" / "x.tif", rng.integers(0, 255, (20, 20), dtype=np.uint8))
    write_dicom(root / "b" / "scan.dcm", rng.integers(0, 3000, (24, 24)))
    write_nifti(root / "b" / "vol.nii.gz", rng.normal(size=(16, 16, 9)))
    return root


def test_a_folder_of_mixed_formats_loads_at_the_configured_size(mixed_folder: Path) -> None:
    ds = load_image_folder(mixed_folder, image_size=16, channels=3)
    assert ds.images.shape == (6, 3, 16, 16)
    assert ds.class_names == ("a", "b")
    assert ds.class_counts() == {"a": 3, "b": 3}
    assert ds.domain == "set"
    assert ds.splits is None


def test_grey_and_sixteen_bit_images_use_the_full_uint8_range(mixed_folder: Path) -> None:
    ds = load_image_folder(mixed_folder, image_size=32, channels=1)
    assert ds.images.shape[1] == 1
    deep = list(ds.files).index("a/deep.png")
    assert ds.images[deep].max() >= 250 and ds.images[deep].min() <= 5


def test_nifti_gives_the_middle_slice_by_default(tmp_path: Path) -> None:
    vol = np.zeros((8, 8, 5), dtype=np.float32)
    vol[:, :, 2] = 7.0
    path = write_nifti(tmp_path / "v.nii.gz", vol)
    assert read_image(path).max() == 7.0
    assert read_image(path, nifti_slice=0).max() == 0.0
    with pytest.raises(UnreadableImageError, match=r"slice 9 is out of range 0\.\.4"):
        read_image(path, nifti_slice=9)


def test_split_folders_become_dataset_splits(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for cls in ("x", "y"):
            _png(tmp_path / split / cls / "1.png", np.full((8, 8), 100, np.uint8))
    ds = load_image_folder(tmp_path, image_size=8)
    assert ds.available_splits() == ("test", "train")
    assert len(ds.select_split("test")) == 2


def test_a_corrupt_image_stops_loading_with_its_name_and_the_fix(mixed_folder: Path) -> None:
    (mixed_folder / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(UnreadableImageError, match=r"broken\.png.*pass --skip-bad"):
        load_image_folder(mixed_folder, image_size=16)


def test_a_truncated_jpeg_is_reported(tmp_path: Path) -> None:
    good = _png(tmp_path / "c" / "ok.jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    (tmp_path / "c" / "cut.jpg").write_bytes(good.read_bytes()[:300])
    with pytest.raises(UnreadableImageError, match=r"cut\.jpg"):
        load_image_folder(tmp_path, image_size=16)


def test_skip_bad_skips_and_lists_unreadable_files(mixed_folder: Path) -> None:
    (mixed_folder / "a" / "broken.png").write_bytes(b"garbage")
    ds = load_image_folder(mixed_folder, image_size=16, skip_bad=True)
    assert ds.skipped == ("a/broken.png",)
    assert len(ds) == 6


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"folder .*nowhere does not exist"):
        load_image_folder(tmp_path / "nowhere")


def test_an_empty_folder_says_how_to_lay_it_out(tmp_path: Path) -> None:
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match=r"holds no images: lay it out as"):
        load_image_folder(tmp_path / "empty")


def test_dicom_pixels_are_read_without_patient_fields(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "p.dcm", np.arange(16 * 16).reshape(16, 16))
    arr = read_image(path)
    assert arr.shape == (16, 16)
    assert float(arr.max()) == 255.0
