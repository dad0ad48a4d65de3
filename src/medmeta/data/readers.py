"""Read one image file into a numpy array: PNG/JPEG/TIFF/BMP (Pillow), DICOM (pydicom), NIfTI (nibabel).

DICOM is read for pixel data only: no patient field is ever returned, logged or written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medmeta._optional import optional_import
from medmeta.errors import DataError

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = RASTER_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES


class UnreadableImageError(DataError):
    """One image file cannot be decoded."""


def image_suffix(path: Path) -> str:
    """Lower-case suffix, with ``.nii.gz`` as one suffix."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and image_suffix(path) in IMAGE_SUFFIXES


def _read_raster(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()  # decodes fully: a truncated file fails here, not later
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.asarray(im, dtype=np.int32)
        if im.mode == "F":
            return np.asarray(im, dtype=np.float32)
        if im.mode not in ("L", "RGB"):
            return np.asarray(im.convert("RGB"))
        return np.asarray(im)


def _read_dicom(path: Path) -> np.ndarray:
    pydicom = optional_import("pydicom", "reading DICOM files")
    ds = pydicom.dcmread(str(path), force=True)
    pixels = ds.pixel_array  # raises when there is no pixel data
    arr = np.asarray(pixels).astype(np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    arr = arr * slope + intercept
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = arr.max() - arr
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):  # multi-frame: middle frame
        arr = arr[arr.shape[0] // 2]
    return arr


def _read_nifti(path: Path, slice_index: int | None, axis: int) -> np.ndarray:
    nib = optional_import("nibabel", "reading NIfTI files")
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    if data.ndim == 2:
        return data
    if data.ndim != 3:
        raise UnreadableImageError(f"{path}: NIfTI with {data.ndim} dimensions is not supported")
    n = data.shape[axis]
    idx = n // 2 if slice_index is None else slice_index
    if not 0 <= idx < n:
        raise UnreadableImageError(
            f"{path}: slice {idx} is out of range 0..{n - 1} along axis {axis}: choose another slice"
        )
    return np.take(data, idx, axis=axis)


def read_image(path: str | Path, *, nifti_slice: int | None = None, nifti_axis: int = 2) -> np.ndarray:
    """Read an image file.

    Args:
        path: file with a suffix in `IMAGE_SUFFIXES`.
        nifti_slice: for NIfTI volumes, the slice to take (default: the middle slice).
        nifti_axis: axis of the volume along which slices are taken (2 = axial for RAS volumes).

    Returns:
        ``(H, W)`` or ``(H, W, C)`` array; uint8 for 8-bit rasters, int32/float32 for 16-bit, DICOM, NIfTI.

    Raises:
        UnreadableImageError: the file is missing, truncated, corrupt or of an unknown type.
    """
    path = Path(path)
    suffix = image_suffix(path)
    try:
        if suffix in RASTER_SUFFIXES:
            return _read_raster(path)
        if suffix in DICOM_SUFFIXES:
            return _read_dicom(path)
        if suffix in NIFTI_SUFFIXES:
            return _read_nifti(path, nifti_slice, nifti_axis)
    except UnreadableImageError:
        raise
    except ImportError:
        raise
    except (
        OSError,
        ValueError,
        SyntaxError,
        UnidentifiedImageError,
        AttributeError,
        EOFError,
    ) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnreadableImageError(f"cannot read image {path}: {reason}") from exc
    except Exception as exc:  # decoders raise many types on corrupt input
        raise UnreadableImageError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    raise UnreadableImageError(
        f"{path}: unsupported file type '{suffix}'; supported: {', '.join(IMAGE_SUFFIXES)}"
    )
