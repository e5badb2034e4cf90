"""Tiny DICOM fixtures for tests (importable by any test module: ``from tests.dicom_fixtures``
or, with tests/ on sys.path, ``from dicom_fixtures``).

``phantom`` makes a small chest-like stored-value image; ``write_good_set`` writes a mix of
photometric interpretations, bit depths and transfer syntaxes; ``write_bad_files`` writes one
file per kind of bad input and returns ``{file name: substring of the expected reason}``;
``write_malformed_lut_files`` does the same for LUT tags that made pydicom raise mid-run.
``write_jpeg_lossless`` writes a JPEG lossless (process 14, SV1) file, which no installed
package can encode (pylibjpeg-libjpeg only decodes), with a minimal encoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import JPEGLosslessSV1

from cxrdet.dicomio.write import write_dicom


def phantom(h: int = 64, w: int = 48, bits: int = 12, seed: int = 0, signed: bool = False,
            noise: float = 0.05) -> np.ndarray:
    """Chest-like stored values: dark lungs, bright mediastinum and borders, ribs, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = xx / max(w - 1, 1) - 0.5, yy / max(h - 1, 1)
    lungs = np.exp(-(((np.abs(x) - 0.22) / 0.15) ** 2 + ((y - 0.45) / 0.3) ** 2))
    ribs = 0.15 * (np.sin(y * 40.0) > 0.6)
    body = 0.85 - 0.6 * lungs + ribs * lungs + noise * rng.standard_normal((h, w))
    top = (1 << bits) - 1
    values = np.clip(body, 0, 1) * top * 0.9 + top * 0.05
    if signed:
        values -= top // 2 + 1
        return np.rint(values).astype(np.int16)
    return np.rint(values).astype(np.uint16)


def write_good_set(folder: Path, h: int = 64, w: int = 48) -> dict[str, Path]:
    """Six good files covering MONOCHROME1/2, 12/14/16 bits, window/VOI LUT, J2K/RLE."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = {
        "m2_12_window": dict(bits_stored=12, window_center=2000, window_width=3000),
        "m1_14_j2k": dict(bits_stored=14, photometric="MONOCHROME1", transfer_syntax="jpeg2000",
                          window_center=[8000, 6000], window_width=[12000, 4000]),
        "m2_16_rle": dict(bits_stored=16, transfer_syntax="rle", rescale_slope=0.5,
                          rescale_intercept=-100.0),
        "m2_12_lut": dict(bits_stored=12, voi_lut=np.clip(np.arange(4096) // 8, 0, 511)),
        "m1_12_implicit": dict(bits_stored=12, photometric="MONOCHROME1", transfer_syntax="implicit"),
        "m2_12_cr": dict(bits_stored=12, modality="CR", patient_age="030M", patient_sex="F"),
    }
    out = {}
    for i, (name, kw) in enumerate(cases.items()):
        stored = phantom(h, w, kw["bits_stored"], seed=i)
        out[name] = write_dicom(folder / f"{name}.dicom", stored, **kw)
    return out


def write_bad_files(folder: Path, h: int = 64, w: int = 48) -> dict[str, str]:
    """One file per bad-input kind -> substring of the reason prepare must report."""
    folder.mkdir(parents=True, exist_ok=True)
    stored = phantom(h, w)
    good = write_dicom(folder / "truncated.dicom", stored)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) - stored.nbytes // 2])  # cut inside the pixel data
    (folder / "not_dicom.dicom").write_text("image_id,class_name\nthis is a CSV, not DICOM\n")
    write_dicom(folder / "no_pixels.dcm", stored, extra={"PixelData": None})
    write_dicom(folder / "rgb.dicom", stored, extra={"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB"})
    write_dicom(folder / "multiframe.dicom", stored, extra={"NumberOfFrames": 2})
    write_dicom(folder / "zero_size.dicom", stored, extra={"Rows": 0})
    return {
        "truncated.dicom": "pixel data cannot be decoded",
        "not_dicom.dicom": "not a DICOM file",
        "no_pixels.dcm": "no PixelData",
        "rgb.dicom": "colour",
        "multiframe.dicom": "multi-frame",
        "zero_size.dicom": "zero-size",
    }


def write_malformed_lut_files(folder: Path, h: int = 64, w: int = 48) -> dict[str, str]:
    """Readable files whose LUT tags are malformed -> substring of the reason prepare reports.

    ``voi_lut_1value``: a VOI LUT Sequence whose LUTDescriptor has one value instead of three;
    ``modality_lut_short``: a Modality LUT Sequence whose LUTData is shorter than described.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stored = phantom(h, w)
    voi = write_dicom(folder / "voi_lut_1value.dicom", stored, voi_lut=np.arange(4096) // 8)
    ds = pydicom.dcmread(voi)
    ds.VOILUTSequence[0].LUTDescriptor = 4096
    ds.save_as(voi)
    mod = write_dicom(folder / "modality_lut_short.dicom", stored,
                      extra={"RescaleSlope": None, "RescaleIntercept": None, "RescaleType": None})
    ds = pydicom.dcmread(mod)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 16])
    item.ModalityLUTType = "US"
    item.add_new("LUTData", "US", list(range(100)))  # 100 of the 4096 entries described
    ds.ModalityLUTSequence = Sequence([item])
    ds.save_as(mod)
    return {
        "voi_lut_1value.dicom": "LUTDescriptor of 1 value(s); expected 3",
        "modality_lut_short.dicom": "LUTData has 100 entries but its LUTDescriptor says 4096",
    }


def strip_transfer_syntax(path: Path) -> Path:
    """Rewrite an uncompressed file without (0002,0010), as some public-release files are."""
    ds = pydicom.dcmread(path)
    del ds.file_meta.TransferSyntaxUID
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=False)
    return path


def encode_jpeg_lossless_sv1(stored: np.ndarray, precision: int) -> bytes:
    """Minimal ITU T.81 process-14 codestream: one component, predictor 1 (left; the first
    column from above), one Huffman table giving every difference category a 5-bit code."""
    arr = np.asarray(stored, dtype=np.int64)
    h, w = arr.shape
    pred = np.empty_like(arr)
    pred[:, 1:], pred[1:, 0], pred[0, 0] = arr[:, :-1], arr[:-1, 0], 1 << (precision - 1)
    diff = (arr - pred) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff).ravel()  # T.81 H.1.2.1: modulo 2**16
    bits = []
    for d in diff.tolist():
        ssss = min(abs(d).bit_length(), 16)  # category 16 (|d| = 32768) has no extra bits
        bits.append(format(ssss, "05b"))
        if 0 < ssss < 16:
            bits.append(format(d if d > 0 else (d - 1) & ((1 << ssss) - 1), f"0{ssss}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)  # pad the last byte with 1-bits
    data = int(stream, 2).to_bytes(len(stream) // 8, "big").replace(b"\xff", b"\xff\x00")
    sof3 = (bytes([0xFF, 0xC3, 0, 11, precision]) + h.to_bytes(2, "big") + w.to_bytes(2, "big")
            + bytes([1, 1, 0x11, 0]))
    dht = bytes([0xFF, 0xC4, 0, 36, 0x00] + [0, 0, 0, 0, 17] + [0] * 11 + list(range(17)))
    sos = bytes([0xFF, 0xDA, 0, 8, 1, 1, 0x00, 1, 0, 0])  # Ss = 1: predictor selection value 1
    return b"\xff\xd8" + sof3 + dht + sos + data + b"\xff\xd9"


def write_jpeg_lossless(path: Path, stored: np.ndarray, **kw) -> Path:
    """``write_dicom(path, stored, **kw)``, then its pixels re-encoded as JPEG lossless SV1."""
    path = write_dicom(path, stored, **kw)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([encode_jpeg_lossless_sv1(stored, int(ds.BitsStored))])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.save_as(path)
    return path
