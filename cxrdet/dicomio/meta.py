"""DICOM tags -> one META.csv row, without reading pixels.

Missing or unusable values become NaN (numbers) or "" (text), never 0, so a model or a human
cannot mistake "unknown" for a measurement.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from cxrdet.dicomio.errors import BadDicomError

META_COLUMNS = [
    "image_id", "rows", "columns", "photometric_interpretation", "bits_stored",
    "pixel_spacing_row", "pixel_spacing_col", "patient_age", "patient_sex", "modality",
    "manufacturer", "transfer_syntax_uid", "window_center", "window_width",
]
DICOM_SUFFIXES = (".dicom", ".dcm")
_AGE_DAYS = {"D": 1.0, "W": 7.0, "M": 365.25 / 12.0, "Y": 365.25}
_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
NAN = float("nan")


def image_id_from_path(path: str | os.PathLike) -> str:
    """VinBigData image id: the file name without a ``.dicom``/``.dcm`` extension."""
    name = Path(path).name
    for suffix in DICOM_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def parse_age(value: Any) -> float:
    """DICOM Age String (``045Y``, ``006M``, ``003W``, ``010D``; bare digits = years) -> years.

    ``000Y`` is NaN: VinBigData's anonymisation writes it for unknown ages, and no adult chest
    film is of a newborn aged zero years (a newborn's age would be in days or weeks).
    """
    match = _AGE_RE.match(str(value or ""))
    if not match:
        return NAN
    number, unit = int(match.group(1)), (match.group(2) or "Y").upper()
    if number == 0:
        return NAN
    return round(number * _AGE_DAYS[unit] / 365.25, 4)


def open_header(path: str | os.PathLike) -> Dataset:
    """Read the tags only; BadDicomError when the file is not readable DICOM."""
    return dcmread_checked(path, stop_before_pixels=True)


def dcmread_checked(path: str | os.PathLike, stop_before_pixels: bool) -> Dataset:
    """``pydicom.dcmread`` with every way a file can be unreadable raised as one BadDicomError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd-but-readable tags must not flood a 15k-file run
            return dcmread(path, stop_before_pixels=stop_before_pixels)
    except FileNotFoundError:
        raise BadDicomError("file not found") from None
    except IsADirectoryError:
        raise BadDicomError("is a directory, not a file") from None
    except InvalidDicomError:
        raise BadDicomError("not a DICOM file: no 'DICM' marker after the 128-byte preamble") from None
    except Exception as e:  # pydicom raises many types for corrupt input; all mean "unreadable"
        raise BadDicomError(f"unreadable DICOM, truncated or corrupt ({type(e).__name__}: {e})") from None


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """One META.csv row for the file at ``path`` (pixels are not read)."""
    ds = open_header(path)
    try:
        return metadata_from_dataset(ds, image_id_from_path(path))
    except Exception as e:  # pydicom converts tag values lazily: a malformed one raises only here
        raise BadDicomError(f"malformed tags, the metadata cannot be read ({type(e).__name__}: {e})") from None


def metadata_from_dataset(ds: Dataset, image_id: str) -> dict[str, Any]:
    """META.csv row from an already read dataset (with or without pixels)."""
    spacing = _spacing(ds)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return {
        "image_id": image_id,
        "rows": _count(ds.get("Rows")),
        "columns": _count(ds.get("Columns")),
        "photometric_interpretation": _text(ds.get("PhotometricInterpretation")),
        "bits_stored": _count(ds.get("BitsStored")),
        "pixel_spacing_row": spacing[0],
        "pixel_spacing_col": spacing[1],
        "patient_age": parse_age(ds.get("PatientAge")),
        "patient_sex": _text(ds.get("PatientSex")).upper(),
        "modality": _text(ds.get("Modality")),
        "manufacturer": _text(ds.get("Manufacturer")),
        "transfer_syntax_uid": _text(ts),
        "window_center": first_value(ds.get("WindowCenter")),
        "window_width": first_value(ds.get("WindowWidth")),
    }


def first_value(value: Any) -> float:
    """First of a possibly multi-valued numeric tag (the default window); NaN when absent."""
    if value is None or value == "":
        return NAN
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        if len(value) == 0:
            return NAN
        value = value[0]
    return _number(value, zero_is_missing=False)


def _spacing(ds: Dataset) -> tuple[float, float]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and not isinstance(value, str) and len(value) == 2:
            row, col = _number(value[0]), _number(value[1])
            if not (math.isnan(row) or math.isnan(col)):
                return row, col
    return NAN, NAN


def _number(value: Any, zero_is_missing: bool = True) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return NAN
    if not math.isfinite(number) or (zero_is_missing and number == 0):
        return NAN
    return number


def _count(value: Any) -> int | float:
    number = _number(value)
    return NAN if math.isnan(number) else int(number)


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()
