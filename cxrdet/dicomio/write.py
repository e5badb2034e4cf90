"""Write CR/DX DICOM files that look like real chest X-ray exports.

Used by ``cxrdet synth`` and by the tests. Files carry a proper file meta header, SOP class,
UIDs, image pixel module and presentation tags (window, VOI LUT, rescale), and may be
compressed losslessly (JPEG 2000, RLE) with pydicom's encoders. The bytes depend only on the
inputs: UIDs are derived from the pixel content and tags unless given, and no timestamps are
written, so a seeded generator produces byte-identical files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

# name accepted by ``transfer_syntax`` -> (UID, encoder plugin passed to Dataset.compress)
TRANSFER_SYNTAXES: dict[str, tuple[UID, str]] = {
    "explicit": (ExplicitVRLittleEndian, ""),
    "implicit": (ImplicitVRLittleEndian, ""),
    "jpeg2000": (JPEG2000Lossless, "pylibjpeg"),
    "rle": (RLELossless, "pydicom"),  # pydicom's own RLE encoder needs no extra package
    "jpegls": (JPEGLSLossless, ""),
    "jpeg_lossless": (JPEGLosslessSV1, ""),
}

_SOP_CLASS = {"CR": ComputedRadiographyImageStorage, "DX": DigitalXRayImageStorageForPresentation}


def derived_uid(*parts: object) -> UID:
    """A valid, deterministic UID (``2.25.<128-bit int>``, ISO/IEC 9834-8) from the parts."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:16]
    return UID(f"2.25.{int.from_bytes(digest, 'big')}")


def write_dicom(
    path: str | os.PathLike,
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    window_center: float | Sequence[float] | None = None,
    window_width: float | Sequence[float] | None = None,
    voi_lut: np.ndarray | None = None,
    voi_lut_first_mapped: int = 0,
    transfer_syntax: str = "explicit",
    modality: str = "DX",
    patient_age: str | None = "045Y",
    patient_sex: str | None = "M",
    manufacturer: str | None = "CXRDET SYNTHETIC",
    pixel_spacing: tuple[float, float] | None = (0.14, 0.14),
    sop_instance_uid: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the stored values ``stored`` ([rows, cols] integers) as a DICOM file at ``path``.

    ``stored`` holds the raw stored pixel values (before the modality LUT); they must fit in
    ``bits_stored`` bits (signed when any value is negative; PixelRepresentation follows).
    ``window_center``/``window_width`` may be lists (multi-valued, the first is the default
    window). ``voi_lut`` is a 1-D array of output values written as a VOI LUT Sequence whose
    first entry maps stored value ``voi_lut_first_mapped``. ``extra`` sets further tags by
    keyword after everything else (a value of ``None`` deletes the tag), e.g. to make
    deliberately odd files in tests. Returns the path written.
    """
    arr = _check_pixels(stored, bits_stored)
    ts_uid, plugin = _check_options(arr, photometric, modality, transfer_syntax)

    content = hashlib.sha256(arr.tobytes()).hexdigest()
    key = (content, arr.shape, photometric, bits_stored, modality, patient_age, patient_sex)
    sop_uid = UID(sop_instance_uid) if sop_instance_uid else derived_uid("sop", *key)

    ds = Dataset()
    ds.file_meta = _file_meta(_SOP_CLASS[modality], sop_uid)
    _patient_study(ds, key, modality, patient_age, patient_sex, manufacturer, sop_uid)
    _image_pixel(ds, arr, photometric, bits_stored, pixel_spacing)
    _presentation(ds, rescale_slope, rescale_intercept, window_center, window_width)
    if voi_lut is not None:
        ds.VOILUTSequence = DicomSequence([_voi_lut_item(voi_lut, voi_lut_first_mapped)])
    ds.PixelData = arr.tobytes()

    if ts_uid.is_compressed:
        # compress() encodes from PixelData and the image pixel module set above
        ds.compress(ts_uid, encoding_plugin=plugin, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = ts_uid
    for keyword, value in (extra or {}).items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, implicit_vr=ts_uid == ImplicitVRLittleEndian, little_endian=True,
               enforce_file_format=True)
    return path


def _check_options(arr: np.ndarray, photometric: str, modality: str,
                   transfer_syntax: str) -> tuple[UID, str]:
    ts_uid, plugin = _transfer_syntax(transfer_syntax)
    if photometric not in {"MONOCHROME1", "MONOCHROME2"}:
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if modality not in _SOP_CLASS:
        raise ValueError(f"modality must be one of {sorted(_SOP_CLASS)}, got {modality!r}")
    if ts_uid == JPEG2000Lossless and min(arr.shape) < 32:
        # pylibjpeg-openjpeg always uses 6 wavelet resolutions: each side needs >= 2**5 pixels
        raise ValueError(f"JPEG 2000 needs images of at least 32x32 pixels, got {arr.shape}")
    return ts_uid, plugin


def _check_pixels(stored: np.ndarray, bits_stored: int) -> np.ndarray:
    arr = np.asarray(stored)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"stored pixels must be a non-empty 2-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"stored pixels must be integers, got dtype {arr.dtype}")
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be in 8..16, got {bits_stored}")
    signed = bool(arr.min() < 0)
    lo, hi = (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    if arr.min() < lo or arr.max() > hi:
        raise ValueError(
            f"stored values span [{arr.min()}, {arr.max()}] but {bits_stored} "
            f"{'signed' if signed else 'unsigned'} bits hold [{lo}, {hi}]"
        )
    return np.ascontiguousarray(arr, dtype="<i2" if signed else "<u2")


def _transfer_syntax(name: str) -> tuple[UID, str]:
    if name not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}, got {name!r}")
    uid, plugin = TRANSFER_SYNTAXES[name]
    if uid.is_compressed:
        from pydicom.pixels import get_encoder

        try:
            encoder = get_encoder(uid)
        except NotImplementedError:
            raise ValueError(f"pydicom has no encoder for {uid.name} ({name!r})") from None
        if not encoder.is_available:
            missing = "; ".join(encoder.missing_dependencies) or "no plugin"
            raise ValueError(f"cannot write {uid.name} ({name!r}): {missing}")
        if plugin and plugin not in encoder.available_plugins:
            plugin = ""  # let pydicom pick whichever installed plugin can encode
    return uid, plugin


def _file_meta(sop_class: UID, sop_uid: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _patient_study(ds: Dataset, key: tuple, modality: str, age: str | None, sex: str | None,
                   manufacturer: str | None, sop_uid: UID) -> None:
    ds.SOPClassUID = _SOP_CLASS[modality]
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = derived_uid("study", *key)
    ds.SeriesInstanceUID = derived_uid("series", *key)
    ds.Modality = modality
    ds.PatientID = hashlib.sha256(str(key).encode()).hexdigest()[:12]
    ds.PatientName = ""  # anonymised, as in the public VinBigData release
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]  # required for DX; VinBigData films are PA, patient's left on the right
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    for keyword, value in (("PatientAge", age), ("PatientSex", sex), ("Manufacturer", manufacturer)):
        if value is not None:
            setattr(ds, keyword, value)


def _image_pixel(ds: Dataset, arr: np.ndarray, photometric: str, bits_stored: int,
                 spacing: tuple[float, float] | None) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    if spacing is not None:
        # DX stores the detector spacing as ImagerPixelSpacing too; readers prefer PixelSpacing
        ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
        ds.ImagerPixelSpacing = [float(spacing[0]), float(spacing[1])]


def _presentation(ds: Dataset, slope: float, intercept: float, center, width) -> None:
    ds.RescaleSlope = f"{float(slope):g}"
    ds.RescaleIntercept = f"{float(intercept):g}"
    ds.RescaleType = "US"  # unspecified units, as CR/DX exports say
    if (center is None) != (width is None):
        raise ValueError("window_center and window_width must be given together")
    if center is not None:
        centers, widths = np.atleast_1d(center).tolist(), np.atleast_1d(width).tolist()
        if len(centers) != len(widths):
            raise ValueError(f"{len(centers)} window centres but {len(widths)} widths")
        ds.WindowCenter = [f"{float(c):g}" for c in centers] if len(centers) > 1 else f"{float(centers[0]):g}"
        ds.WindowWidth = [f"{float(w):g}" for w in widths] if len(widths) > 1 else f"{float(widths[0]):g}"
        ds.VOILUTFunction = "LINEAR"


def _voi_lut_item(lut: np.ndarray, first_mapped: int) -> Dataset:
    values = np.asarray(lut)
    if values.ndim != 1 or not 2 <= values.size <= 65536:
        raise ValueError(f"voi_lut must be 1-D with 2..65536 entries, got shape {values.shape}")
    if values.min() < 0 or values.max() > 65535:
        raise ValueError("voi_lut values must fit in 16 unsigned bits")
    bits = 16  # 16-bit entries: pydicom 3.0.2's apply_voi wraps indices > 255 for 8-bit LUTs
    item = Dataset()
    # LUT Descriptor: entries (0 means 65536), first stored value mapped, bits per entry
    # both are ambiguous-VR (US/SS/OW) tags, so the VR is given explicitly
    item.add_new("LUTDescriptor", "US" if first_mapped >= 0 else "SS",
                 [values.size % 65536, int(first_mapped), bits])
    item.LUTExplanation = "CXRDET VOI LUT"
    item.add_new("LUTData", "US", values.astype(np.uint16).tolist())
    return item
