"""Untrusted uploads -> a :class:`Sample` for the detector, or an :class:`UploadRejected` saying why.

The multipart body is streamed through python-multipart into a private folder (made with
``tempfile.mkdtemp`` per request, removed after the response) under a random file name: the
client's file name is only ever read as text for the image id shown back, never used as a path.
The body is cut off as soon as it passes the size limit (413).

A DICOM file's header is read first without its pixels (``stop_before_pixels``); an image whose
declared Rows x Columns x frames x samples exceeds the pixel limit is refused before anything is
decoded, so a 50-byte header cannot make the server allocate gigabytes. PNG and JPEG headers are
read with Pillow (lazily, no pixels) for the same check. Readable files then go through the
exact preprocessing of ``cxrdet infer`` (:func:`dicom_sample`, :func:`grey_sample`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrdet.dicomio.errors import BadDicomError
from cxrdet.dicomio.meta import open_header
from cxrdet.inference.sources import Sample, dicom_sample, grey_sample, png_to_uint8

FIELD = "file"  # the multipart field that carries the image
HEADER_ALLOWANCE = 16 * 1024  # multipart boundaries and part headers on top of the file itself
_ID_CHARS = re.compile(r"[A-Za-z0-9._-]{1,128}")
_SUFFIXES = (".dicom", ".dcm", ".png", ".jpg", ".jpeg")


class UploadRejected(Exception):
    """An upload the server will not predict; ``status`` is the HTTP code, ``str(e)`` the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Upload:
    """The received file: its path in the private folder and the client's (untrusted) name."""

    path: Path
    client_name: str
    size: int


def display_id(client_name: str) -> str:
    """The image id shown for an upload: the client's file name without its suffix when it is a
    plain name (letters, digits, ``._-``), else ``upload``. Never used as a path."""
    name = client_name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return name if _ID_CHARS.fullmatch(name) and name not in {".", ".."} else "upload"


async def receive_upload(content_type: str, content_length: str | None, chunks: AsyncIterator[bytes],
                         folder: Path, max_bytes: int) -> Upload:
    """Stream a multipart body into ``folder``; the part named ``file`` is the upload."""
    from python_multipart.multipart import FormParser, parse_options_header

    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or b"boundary" not in params:
        raise UploadRejected(415, f"expected a multipart/form-data upload with the image in the field "
                                  f"'{FIELD}', got Content-Type {content_type or 'none'!r}")
    limit = max_bytes + HEADER_ALLOWANCE
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise UploadRejected(413, too_large(int(content_length), max_bytes))
    files: dict[str, object] = {}

    def on_file(f) -> None:
        files.setdefault((f.field_name or b"").decode("utf-8", "replace"), f)

    config = {"UPLOAD_DIR": str(folder), "MAX_MEMORY_FILE_SIZE": 0, "UPLOAD_DELETE_TMP": False,
              "UPLOAD_KEEP_FILENAME": False, "UPLOAD_KEEP_EXTENSIONS": False}
    parser = FormParser("multipart/form-data", None, on_file, boundary=params[b"boundary"], config=config)
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > limit:
                raise UploadRejected(413, too_large(received, max_bytes))
            parser.write(chunk)
        parser.finalize()
    except UploadRejected:
        raise
    except Exception as e:  # python-multipart raises several types for a malformed body
        raise UploadRejected(400, f"malformed multipart body ({type(e).__name__}: {e})") from None
    f = files.get(FIELD)
    if f is None:
        raise UploadRejected(422, f"no file in the multipart field '{FIELD}' (fields with files: "
                                  f"{sorted(files) or 'none'}); send the image as -F {FIELD}=@IMAGE")
    if f.in_memory:  # an empty part never reached the disk
        f.flush_to_disk()
    f.close()
    path = Path(f.actual_file_name.decode() if isinstance(f.actual_file_name, bytes) else f.actual_file_name)
    if path.resolve().parent != folder.resolve():
        raise UploadRejected(500, "the upload was not stored in the request's private folder")
    size = path.stat().st_size
    if size > max_bytes:
        raise UploadRejected(413, too_large(size, max_bytes))
    if size == 0:
        raise UploadRejected(422, "the uploaded file is empty")
    name = (f.file_name or b"").decode("utf-8", "replace")
    return Upload(path, name, size)


def too_large(size: int, max_bytes: int) -> str:
    return (f"upload of at least {size / 2**20:.1f} MiB exceeds the server's limit of "
            f"{max_bytes / 2**20:.1f} MiB")


def sniff(path: Path) -> str:
    """``dicom``, ``png`` or ``jpeg`` from the first bytes; anything else is tried as DICOM
    (whose reader then says what is wrong with it)."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    return "dicom"


def check_declared_dicom_size(path: Path, max_pixels: int) -> None:
    """Refuse, from the header alone, a DICOM whose pixel data would be absurdly large."""
    ds = open_header(path)
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except Exception as e:  # pydicom converts values lazily: a malformed tag raises here, with several types
        raise BadDicomError(f"malformed image size tags ({type(e).__name__}: {e})") from None
    declared = rows * cols * max(frames, 1) * max(samples, 1)
    if declared > max_pixels:
        raise UploadRejected(422, f"declared image size Rows={rows} x Columns={cols} x frames={frames} x "
                                  f"samples={samples} = {declared:,} pixels exceeds the server's limit of "
                                  f"{max_pixels:,} pixels; refused before decoding")


def check_declared_picture_size(path: Path, max_pixels: int) -> None:
    """The same check for PNG/JPEG, from the header Pillow reads without decoding pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
    except Image.DecompressionBombError as e:
        raise UploadRejected(422, f"image too large: {e}") from None
    except Exception as e:
        # the type only: Pillow's messages name the file, a server path the client must not see
        raise UploadRejected(422, f"not a readable PNG/JPEG ({type(e).__name__})") from None
    if width * height > max_pixels:
        raise UploadRejected(422, f"declared image size {width} x {height} = {width * height:,} pixels exceeds "
                                  f"the server's limit of {max_pixels:,} pixels; refused before decoding")


def read_picture(path: Path) -> np.ndarray:
    """A PNG/JPEG file -> uint8 grey, as ``cxrdet infer --png-dir`` converts its PNGs."""
    import cv2

    raw = np.fromfile(path, dtype=np.uint8)
    pixels = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED) if raw.size else None
    if pixels is None:
        raise UploadRejected(422, "not a readable PNG/JPEG: the image data cannot be decoded (truncated?)")
    try:
        return png_to_uint8(pixels)
    except ValueError as e:
        raise UploadRejected(422, str(e)) from None


def upload_sample(upload: Upload, settings, with_features: bool, max_pixels: int) -> Sample:
    """The Sample of an upload (blocking: decoding runs in a worker thread)."""
    image_id = display_id(upload.client_name)
    kind = sniff(upload.path)
    try:
        if kind == "dicom":
            check_declared_dicom_size(upload.path, max_pixels)
            return dicom_sample(image_id, upload.path, settings, with_features)
        check_declared_picture_size(upload.path, max_pixels)
        grey = read_picture(upload.path)
        return grey_sample(image_id, grey, grey.shape[:2], settings.size, with_features)
    except BadDicomError as e:
        reason = e.reason.replace(str(upload.path), "the upload")  # no server path in an answer
        raise UploadRejected(422, f"not a usable DICOM (nor a PNG/JPEG): {reason}") from None
