"""Image files for reading tests: a huge PNG that costs no memory to write, plain and compressed DICOM."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def write_big_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black grey PNG written row by row: a 13000x13000 one is 164 KB and takes no memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(1)
    row = bytes(width + 1)  # filter byte + pixels
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path


def write_dicom(
    path: Path,
    pixels: np.ndarray | None = None,
    *,
    compressed: bool = False,
    modality: str = "OT",
    bits_stored: int = 16,
    fields: dict[str, str] | None = None,
) -> Path:
    """A 16-bit grey DICOM: `pixels` ``(H, W)`` or ``(frames, H, W)`` stored plainly, or a JPEG-LS stub.

    Args:
        modality: ``Modality`` (an MR file is written with the MR storage class).
        bits_stored: significant bits of each 16-bit pixel (12 for a scanner-like MR image).
        fields: further data elements by keyword, e.g. patient fields.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEGLSLossless,
        MRImageStorage,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    arr = np.zeros((16, 16), np.uint16) if pixels is None else pixels.astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage if modality == "MR" else SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGLSLossless if compressed else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    for key, value in (fields or {}).items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns = arr.shape[-2:]
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    if compressed:  # a JPEG-LS codestream stub: only the transfer syntax matters here
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(40) + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path
