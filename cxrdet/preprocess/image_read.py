"""One PNG/JPEG file -> ``(display image float32 in [0, 1], metadata dict)``, like ``dicomio.read``.

8-bit files keep their grey levels (``value / 255``): they are display images already. 16-bit
files are min-max stretched (releases store the full 16-bit range or only the 12-14 bits of the
detector; a stretch handles both). RGB(A) files are converted to grey (ITU-R 601 luma, OpenCV).
Anything that stops a file from becoming a grey image raises ``BadImageError`` with a one-line
reason, which ``cxrdet prepare`` lists in its errors CSV.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cxrdet.dicomio import intensity
from cxrdet.dicomio.errors import BadDicomError


class BadImageError(BadDicomError):
    """A PNG/JPEG that cannot become a grey image (same ``reason`` contract as BadDicomError)."""


def _to_grey(pixels: np.ndarray) -> tuple[np.ndarray, str]:
    if pixels.ndim == 2:
        return pixels, "MONOCHROME2"
    if pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        code = cv2.COLOR_BGRA2GRAY if pixels.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        return cv2.cvtColor(pixels, code), "RGB"
    raise BadImageError(f"decoded pixels have shape {pixels.shape}; expected grey [h, w] or colour [h, w, 3|4]")


def read_image_file(path: str | os.PathLike, image_id: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read ``path`` as a display image (float32 ``[h, w]`` in ``[0, 1]``, bright bone).

    The metadata dict has the META.csv columns an image file can tell (``image_id``, ``rows``,
    ``columns``, ``photometric_interpretation``: MONOCHROME2 or RGB, ``bits_stored``) and
    ``voi_applied`` (``none`` for 8-bit, ``minmax`` for 16-bit).
    """
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)  # imdecode: cv2.imread fails on non-ASCII paths
    pixels = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED) if raw.size else None
    if pixels is None:
        raise BadImageError(f"not a readable {path.suffix.lstrip('.').upper() or 'image'} file "
                            f"({raw.size} bytes): truncated or another format")
    grey, photometric = _to_grey(pixels)
    if grey.size == 0:
        raise BadImageError(f"zero-size image {grey.shape}")
    if grey.dtype == np.uint8:
        display, bits, applied = grey.astype(np.float32) / np.float32(255.0), 8, "none"
    elif grey.dtype == np.uint16:
        display, bits, applied = intensity.minmax(grey.astype(np.float32)), 16, "minmax"
    else:
        raise BadImageError(f"pixel type {grey.dtype}; expected 8- or 16-bit")
    meta = {"image_id": image_id if image_id is not None else path.stem, "rows": int(grey.shape[0]),
            "columns": int(grey.shape[1]), "photometric_interpretation": photometric, "bits_stored": bits,
            "modality": "", "transfer_syntax_uid": "", "voi_applied": applied}
    return display, meta
