"""The one path from a DICOM (or PNG/JPEG) file to a cached image: used by ``prepare`` and by inference.

read (decode, rescale, VOI, invert) -> area-resize the float image to ``boxes.resized_hw`` ->
uint8 -> pixel features. Resizing before quantising avoids rounding twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from cxrdet.boxes import resized_hw
from cxrdet.dicomio import intensity
from cxrdet.dicomio.errors import BadDicomError
from cxrdet.dicomio.read import read_dicom
from cxrdet.preprocess.cache import CacheSettings
from cxrdet.preprocess.features import pixel_features
from cxrdet.preprocess.image_read import read_image_file


@dataclass
class PreparedImage:
    """One file, ready for the cache: uint8 display image at the cache size."""

    image_id: str
    image: np.ndarray  # uint8 [h, w], long side == settings.size
    orig_hw: tuple[int, int]  # DICOM (Rows, Columns): boxes map back with these
    meta: dict[str, Any] = field(default_factory=dict)  # META.csv row (+ voi_applied)
    features: dict[str, float] = field(default_factory=dict)  # px_* gate features


def resize_display(display: np.ndarray, target_hw: tuple[int, int]) -> np.ndarray:
    """Area-resize a float ``[0, 1]`` image to ``target_hw`` and quantise to uint8."""
    if display.shape != tuple(target_hw):
        display = cv2.resize(display, (int(target_hw[1]), int(target_hw[0])),
                             interpolation=cv2.INTER_AREA)
    return intensity.to_uint8(display)


def preprocess_file(path: str | os.PathLike, settings: CacheSettings,
                    with_features: bool = True) -> PreparedImage:
    """Read one DICOM and make its cache image; raises ``BadDicomError`` for a bad file."""
    display, meta = read_dicom(path, settings.voi,
                               reduce_to=settings.size if settings.j2k_reduce else None)
    orig_hw = (int(meta["rows"]), int(meta["columns"]))
    image = resize_display(display, resized_hw(orig_hw, settings.size))
    meta.pop("decoded_hw", None)
    features = pixel_features(image) if with_features else {}
    return PreparedImage(meta["image_id"], image, orig_hw, meta, features)


def preprocess_image_file(path: str | os.PathLike, image_id: str, settings: CacheSettings,
                          with_features: bool = True) -> PreparedImage:
    """Read one PNG/JPEG and make its cache image (same resize as DICOM); ``BadImageError`` if bad."""
    display, meta = read_image_file(path, image_id)
    orig_hw = (int(meta["rows"]), int(meta["columns"]))
    image = resize_display(display, resized_hw(orig_hw, settings.size))
    features = pixel_features(image) if with_features else {}
    return PreparedImage(image_id, image, orig_hw, meta, features)


def init_worker() -> None:
    """Per-process set-up of a decoding worker."""
    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe


def prepare_job(job: tuple) -> tuple[str, PreparedImage | None, str]:
    """Worker entry: ``(file name, PreparedImage or None, reason)``; lives here, not in the
    command module, so spawned workers import only the pipeline (no pandas).

    ``job`` is ``(dicom path, settings)`` or, for a PNG/JPEG, ``(path, settings, image_id,
    listed name)`` (the id comes from the path relative to the folder, not the file alone).
    """
    path, settings = job[0], job[1]
    name = job[3] if len(job) > 3 else os.path.basename(path)
    try:
        if len(job) > 2:
            return name, preprocess_image_file(path, job[2], settings), ""
        return name, preprocess_file(path, settings), ""
    except BadDicomError as e:
        return name, None, e.reason
    except Exception as e:  # noqa: BLE001 - a bug on one odd file must not stop a 15k-file run
        # (every rerun would hit the same file); KeyboardInterrupt/SystemExit still propagate
        return name, None, f"unexpected error while preparing this file ({type(e).__name__}: {e})"
