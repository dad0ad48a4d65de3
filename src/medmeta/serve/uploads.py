"""Multipart form uploads parsed in memory, with limits on size, count and file type.

Nothing touches the disk here (unlike the usual spooled temporary files): the caller decides where the
bytes go, which for the web page is the session's own temporary folder.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from medmeta._optional import optional_import
from medmeta.data.readers import IMAGE_SUFFIXES, image_suffix
from medmeta.errors import MedmetaError

MAX_FIELD_BYTES = 1000
MAX_FIELDS = 200


def basename(filename: str) -> str:
    """The last component of a client's file name (browsers may send ``C:\\dir\\x.png``)."""
    return filename.replace("\\", "/").rsplit("/", 1)[-1]


class UploadError(MedmetaError):
    """An upload breaks a limit or holds a file that is not an image; `status` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Upload limits of the web page."""

    max_files: int = 200
    max_file_bytes: int = 20_000_000
    max_upload_bytes: int = 200_000_000
    max_pixels: int = 16_000_000
    """Most pixels an uploaded image may declare (checked from its header before decoding): 16 MP, below
    the command line's 50 MP (`medmeta.data.readers.DEFAULT_MAX_PIXELS`), as several browsers share the
    page."""


@dataclass
class UploadedFile:
    field: str
    filename: str
    data: bytearray


@dataclass
class Form:
    """Text fields (``name -> values``) and files of one request."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)

    def value(self, name: str, default: str = "") -> str:
        return self.fields.get(name, [default])[0]

    def files_of(self, name: str) -> list[UploadedFile]:
        return [f for f in self.files if f.field == name]


@dataclass
class _Part:
    """The part being parsed."""

    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)
    headers: dict[bytes, bytes] = field(default_factory=dict)
    header_name: bytes = b""
    header_value: bytes = b""

    def reset(self) -> None:
        self.name, self.filename, self.data = "", None, bytearray()
        self.headers, self.header_name, self.header_value = {}, b"", b""


def _disposition(value: bytes) -> tuple[str, str | None]:
    mp = optional_import("python_multipart", "the web page (medmeta serve)")
    _kind, params = mp.multipart.parse_options_header(value)
    name = params.get(b"name", b"").decode("utf-8", "replace")
    filename = params.get(b"filename")
    return name, None if filename is None else filename.decode("utf-8", "replace")


async def parse_form(content_type: str, body: AsyncIterator[bytes], limits: Limits) -> Form:
    """Parse a ``multipart/form-data`` body, enforcing `limits` while it streams in.

    Empty file inputs are dropped. Files must have an image suffix (`IMAGE_SUFFIXES`).

    Raises:
        UploadError: not multipart, too large (413), too many files or fields, or a non-image file (415).
    """
    mp = optional_import("python_multipart", "the web page (medmeta serve)")
    kind, params = mp.multipart.parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadError("the form must be sent as multipart/form-data")
    form = Form()
    part = _Part()
    n_fields = 0

    def on_part_begin() -> None:
        part.reset()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part.header_name += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part.header_value += data[start:end]

    def on_header_end() -> None:
        part.headers[part.header_name.lower()] = part.header_value
        part.header_name, part.header_value = b"", b""

    def on_headers_finished() -> None:
        part.name, part.filename = _disposition(part.headers.get(b"content-disposition", b""))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part.data += data[start:end]
        if part.filename is None and len(part.data) > MAX_FIELD_BYTES:
            raise UploadError(f"form field '{part.name}' is longer than {MAX_FIELD_BYTES} bytes")
        if part.filename is not None and len(part.data) > limits.max_file_bytes:
            raise UploadError(
                f"file '{part.filename}' is larger than {limits.max_file_bytes / 1e6:g} MB "
                "(start the page with a larger --max-file-mb)",
                413,
            )

    def on_part_end() -> None:
        nonlocal n_fields
        if part.filename is None:
            n_fields += 1
            if n_fields > MAX_FIELDS:
                raise UploadError(f"more than {MAX_FIELDS} form fields")
            form.fields.setdefault(part.name, []).append(part.data.decode("utf-8", "replace"))
            return
        if not part.filename and not part.data:
            return  # a file input left empty
        suffix = image_suffix(Path(basename(part.filename)))  # a name only, never opened
        if suffix not in IMAGE_SUFFIXES:
            raise UploadError(
                f"'{part.filename}' is not an image file: accepted types are {', '.join(IMAGE_SUFFIXES)}",
                415,
            )
        form.files.append(UploadedFile(part.name, part.filename, part.data))
        if len(form.files) > limits.max_files:
            raise UploadError(
                f"more than {limits.max_files} files in one upload (start the page with a larger --max-files)",
                413,
            )

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
    }
    parser = mp.multipart.MultipartParser(boundary, callbacks)
    total = 0
    async for chunk in body:
        total += len(chunk)
        if total > limits.max_upload_bytes:
            raise UploadError(
                f"the upload is larger than {limits.max_upload_bytes / 1e6:g} MB "
                "(start the page with a larger --max-upload-mb)",
                413,
            )
        try:
            parser.write(chunk)
        except mp.exceptions.MultipartParseError as exc:
            raise UploadError(f"the upload is not a valid multipart form ({exc})") from None
    try:
        parser.finalize()
    except mp.exceptions.MultipartParseError as exc:
        raise UploadError(f"the upload is not a valid multipart form ({exc})") from None
    return form
