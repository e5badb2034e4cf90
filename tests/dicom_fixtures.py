"""Tiny DICOM fixtures for tests (importable by any test module: ``from tests.dicom_fixtures``
or, with tests/ on sys.path, ``from dicom_fixtures``).

``phantom`` makes a small chest-like stored-value image; ``write_good_set`` writes a mix of
photometric interpretations, bit depths and transfer syntaxes; ``write_bad_files`` writes one
file per kind of bad input and returns ``{file name: substring of the expected reason}``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

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


def strip_transfer_syntax(path: Path) -> Path:
    """Rewrite an uncompressed file without (0002,0010), as some public-release files are."""
    ds = pydicom.dcmread(path)
    del ds.file_meta.TransferSyntaxUID
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=False)
    return path
