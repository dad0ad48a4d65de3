"""Read one image file into a numpy array: PNG/JPEG/TIFF/BMP (Pillow), DICOM (pydicom), NIfTI (nibabel).

DICOM is read for pixel data only: no patient field is ever returned, logged or written.

Every read has a pixel budget (`DEFAULT_MAX_PIXELS`, 50 MP) checked against the file's header before
anything is decoded: a 493 KB PNG may declare 13000x13000 pixels, which took 1.3 GB to adapt a model to.
A caller that resizes to a small working size passes it, and images above `REDUCE_ABOVE_PIXELS` are
shrunk as early as the format allows (JPEG decoded at 1/2 to 1/8 scale, others box-averaged before any
float copy), keeping the short side at least twice the working size; smaller images are read unchanged.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from medmeta._optional import optional_import
from medmeta.errors import DataError

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = RASTER_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES

DEFAULT_MAX_PIXELS = 50_000_000
"""Most pixels (width x height of the image, frame or slice read) an image may declare: 50 MP."""
REDUCE_ABOVE_PIXELS = 4_000_000
"""Images with more pixels than this are shrunk early when the caller gives a working size."""
_KEPT_MODES = ("L", "RGB", "I", "F", "I;16", "I;16B", "I;16L")  # other Pillow modes are converted to RGB
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "I", "F")  # modes `Image.reduce` averages channel by channel


class UnreadableImageError(DataError):
    """One image file cannot be decoded."""


class ImageTooLargeError(UnreadableImageError):
    """An image declares more pixels than the reading budget allows (found before decoding)."""


def image_suffix(path: Path) -> str:
    """Lower-case suffix, with ``.nii.gz`` as one suffix."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and image_suffix(path) in IMAGE_SUFFIXES


def check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    """Refuse an image whose header declares more than `max_pixels` (width x height), before decoding it.

    Raises:
        ImageTooLargeError: ``width * height > max_pixels``.
    """
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"cannot read image {path}: {width}x{height} is {width * height:,} pixels, more than the "
            f"{max_pixels:,} allowed: downscale it or raise the limit (--max-pixels)"
        )


def _reduce_factor(width: int, height: int, working_size: int | None) -> int:
    """Integer shrink factor that keeps the short side at least twice `working_size` (1: keep as is)."""
    if working_size is None or width * height <= REDUCE_ABOVE_PIXELS:
        return 1
    return max(1, min(width, height) // (2 * working_size))


def _read_raster(path: Path, max_pixels: int, working_size: int | None) -> np.ndarray:
    with warnings.catch_warnings():
        # Pillow warns above its own 89 MP limit on open; the size is checked just below against ours
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(path)
    with im:
        check_pixels(path, im.width, im.height, max_pixels)  # from the header: nothing decoded yet
        factor = _reduce_factor(im.width, im.height, working_size)
        if working_size is not None and factor > 1 and im.format == "JPEG":
            im.draft(None, (2 * working_size, 2 * working_size))  # decoded at 1/2, 1/4 or 1/8 scale
        im.load()  # decodes fully: a truncated file fails here, not later
        img: Image.Image = im if im.mode in _KEPT_MODES + _REDUCIBLE_MODES else im.convert("RGB")
        factor = _reduce_factor(img.width, img.height, working_size)
        if factor > 1:  # box average before any float copy: a 50 MP scan becomes a few MB
            if img.mode in ("LA", "RGBA"):  # band by band: `reduce` would premultiply a full-size copy
                bands = [img.getchannel(i).reduce(factor) for i in range(len(img.mode) - 1)]
                img = Image.merge("RGB", bands * 3 if len(bands) == 1 else bands)  # alpha dropped
            elif img.mode in _REDUCIBLE_MODES:
                img = img.reduce(factor)
            else:  # 16-bit modes, which `reduce` does not take
                size = (-(-img.width // factor), -(-img.height // factor))
                img = img.resize(size, Image.Resampling.BOX)
        if img.mode not in _KEPT_MODES:
            img = img.convert("RGB")
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.asarray(img, dtype=np.int32)
        if img.mode == "F":
            return np.asarray(img, dtype=np.float32)
        return np.asarray(img)


def _block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """``(H, W[, C])`` -> float32 ``(H // factor, W // factor[, C])``, each pixel the mean of its block."""
    if factor <= 1:
        return arr
    h, w = (arr.shape[0] // factor) * factor, (arr.shape[1] // factor) * factor
    blocks = arr[:h, :w].reshape(h // factor, factor, w // factor, factor, *arr.shape[2:])
    return blocks.mean(axis=(1, 3), dtype=np.float32)


_DECODER_PACKAGES = {"gdcm": "python-gdcm", "numpy": ""}


def _check_decoder(path: Path, ds: Any) -> None:
    """Refuse compressed DICOM pixels that no installed plugin can decode, naming what to install."""
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is None or not getattr(tsyntax, "is_compressed", False):
        return
    try:
        from pydicom.pixels import get_decoder  # pydicom >= 3
    except ImportError:
        return
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise UnreadableImageError(
            f"cannot read image {path}: pydicom has no decoder for its pixel compression ({tsyntax.name})"
        ) from None
    if decoder.is_available:
        return
    missing = (
        decoder.missing_dependencies
    )  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
    plugin = next((m for m in missing if m.startswith("pylibjpeg")), missing[0] if missing else "")
    required = plugin.split("requires", 1)[-1].split(" and ")
    names = [re.split(r"[<>=!~ ]", r.strip(), maxsplit=1)[0] for r in required]
    packages = " ".join(p for p in (_DECODER_PACKAGES.get(n, n) for n in names) if p)
    raise UnreadableImageError(
        f"cannot read image {path}: its pixels are compressed as {tsyntax.name} and no decoder for it is "
        f"installed: run `pip install {packages}`"
    )


def _read_dicom(path: Path, max_pixels: int, working_size: int | None) -> np.ndarray:
    pydicom = optional_import("pydicom", "reading DICOM files")
    ds = pydicom.dcmread(str(path), force=True)
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    check_pixels(path, cols, rows, max_pixels)
    _check_decoder(path, ds)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:  # multi-frame: the middle frame, decoded alone when pydicom can
        try:
            from pydicom.pixels import pixel_array
        except ImportError:
            check_pixels(path, cols, rows * frames, max_pixels)
            pixels = np.asarray(ds.pixel_array)[frames // 2]
        else:
            pixels = pixel_array(ds, index=frames // 2)
    else:
        pixels = ds.pixel_array  # raises when there is no pixel data
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):  # frames without NumberOfFrames: middle frame
        arr = arr[arr.shape[0] // 2]
    arr = _block_mean(arr, _reduce_factor(arr.shape[1], arr.shape[0], working_size)).astype(np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    arr = arr * slope + intercept
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = arr.max() - arr
    return arr


def _read_nifti(
    path: Path, slice_index: int | None, axis: int, max_pixels: int, working_size: int | None
) -> np.ndarray:
    nib = optional_import("nibabel", "reading NIfTI files")
    img = nib.load(str(path))
    shape = tuple(int(s) for s in img.shape)
    index: list[int | slice] = [slice(None)] * len(shape)
    if len(shape) == 4:  # first volume of a series
        index[3] = 0
        shape = shape[:3]
    if len(shape) == 3:
        if not -3 <= axis < 3:
            raise UnreadableImageError(f"{path}: axis {axis} is out of range for a 3-D volume: use 0, 1 or 2")
        n = shape[axis]
        idx = n // 2 if slice_index is None else slice_index
        if not 0 <= idx < n:
            raise UnreadableImageError(
                f"{path}: slice {idx} is out of range 0..{n - 1} along axis {axis}: choose another slice"
            )
        index[axis % 3] = idx
        plane = [s for i, s in enumerate(shape) if i != axis % 3]
    elif len(shape) == 2:
        plane = list(shape)
    else:
        raise UnreadableImageError(f"{path}: NIfTI with {len(shape)} dimensions is not supported")
    check_pixels(path, plane[1], plane[0], max_pixels)
    data = np.asarray(img.dataobj[tuple(index)], dtype=np.float32)  # reads this slice only
    return _block_mean(data, _reduce_factor(plane[1], plane[0], working_size))


def read_image(
    path: str | Path,
    *,
    nifti_slice: int | None = None,
    nifti_axis: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    working_size: int | None = None,
) -> np.ndarray:
    """Read an image file.

    Args:
        path: file with a suffix in `IMAGE_SUFFIXES`.
        nifti_slice: for NIfTI volumes, the slice to take (default: the middle slice).
        nifti_axis: axis of the volume along which slices are taken (2 = axial for RAS volumes).
        max_pixels: most pixels (width x height) the image (DICOM frame, NIfTI slice) may declare; checked
            from the header before decoding.
        working_size: side the caller will resize the image to; when given, an image of more than
            `REDUCE_ABOVE_PIXELS` is shrunk by an integer factor keeping its short side at least twice this.

    Returns:
        ``(H, W)`` or ``(H, W, C)`` array; uint8 for 8-bit rasters, int32/float32 for 16-bit, DICOM, NIfTI.

    Raises:
        ImageTooLargeError: the image declares more than `max_pixels` pixels.
        UnreadableImageError: the file is missing, truncated, corrupt, of an unknown type, compressed
            with a codec whose decoder is not installed, or has no finite pixel (all NaN).
    """
    path = Path(path)
    suffix = image_suffix(path)
    if max_pixels < 1:
        raise DataError(f"max_pixels must be at least 1, got {max_pixels}")
    try:
        if suffix in RASTER_SUFFIXES:
            arr = _read_raster(path, max_pixels, working_size)
        elif suffix in DICOM_SUFFIXES:
            arr = _read_dicom(path, max_pixels, working_size)
        elif suffix in NIFTI_SUFFIXES:
            arr = _read_nifti(path, nifti_slice, nifti_axis, max_pixels, working_size)
        else:
            raise UnreadableImageError(
                f"{path}: unsupported file type '{suffix}'; supported: {', '.join(IMAGE_SUFFIXES)}"
            )
    except UnreadableImageError:
        raise
    except ImportError:
        raise
    except Image.DecompressionBombError as exc:  # above twice Pillow's own limit: refused on open
        raise ImageTooLargeError(f"cannot read image {path}: {_first_line(exc)}") from exc
    except (
        OSError,
        ValueError,
        SyntaxError,
        UnidentifiedImageError,
        AttributeError,
        EOFError,
    ) as exc:
        raise UnreadableImageError(f"cannot read image {path}: {_first_line(exc)}") from exc
    except Exception as exc:  # decoders raise many types on corrupt input
        raise UnreadableImageError(
            f"cannot read image {path}: {type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    if arr.dtype.kind == "f" and not np.isfinite(arr).any():
        raise UnreadableImageError(f"cannot read image {path}: every pixel is NaN or infinite")
    return arr


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message (decoders write several), or its type name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
