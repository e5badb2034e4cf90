"""Broken image files: the DICOM and PNG/JPEG seeds and the strategies that break them, for
every target that takes an image (the file readers, ``cxrdet serve``'s uploads, ``cxrdet
listen``'s received datasets)."""

from __future__ import annotations

import functools
import io
import struct
import warnings

import numpy as np
from hypothesis import strategies as st

from fuzz_core import workdir
from fuzz_strategies import floats, mutated_bytes


@functools.lru_cache(maxsize=None)
def dicom_seeds() -> list[bytes]:
    """Small real DICOM files: plain, MONOCHROME1 implicit, JPEG 2000, RLE, VOI LUT."""
    from dicom_fixtures import phantom

    from cxrdet.dicomio.write import write_dicom

    folder = workdir() / "dicom_seeds"
    cases = [dict(bits_stored=12, window_center=2000, window_width=3000),
             dict(bits_stored=12, photometric="MONOCHROME1", transfer_syntax="implicit"),
             dict(bits_stored=14, transfer_syntax="jpeg2000", window_center=8000, window_width=12000),
             dict(bits_stored=16, transfer_syntax="rle", rescale_slope=0.5, rescale_intercept=-100.0),
             dict(bits_stored=12, voi_lut=np.clip(np.arange(4096) // 8, 0, 511))]
    return [write_dicom(folder / f"{i}.dcm", phantom(32, 32, c["bits_stored"], seed=i), **c).read_bytes()
            for i, c in enumerate(cases)]


# (group, element) of tags whose values the reader interprets; edited in place in the bytes
DICOM_TAGS = [(0x0028, 0x0010), (0x0028, 0x0011), (0x0028, 0x0100), (0x0028, 0x0101), (0x0028, 0x0102),
              (0x0028, 0x0103), (0x0028, 0x0004), (0x0028, 0x0002), (0x0028, 0x1050), (0x0028, 0x1051),
              (0x0028, 0x1052), (0x0028, 0x1053), (0x0028, 0x0030), (0x0010, 0x1010), (0x0002, 0x0010),
              (0x7FE0, 0x0010), (0x0028, 0x3002), (0x0028, 0x3006), (0x0028, 0x3010), (0x0008, 0x0060)]
VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD",
       b"OF", b"OL", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"TM", b"UI", b"UL", b"UN", b"US", b"UT"}
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OW", b"SQ", b"UN", b"UT"}


@st.composite
def dicom_tag_edit(draw, data: bytes) -> bytes:
    """Overwrite the value (or the length) of one interpreted tag, found in the raw bytes."""
    group, element = draw(st.sampled_from(DICOM_TAGS))
    at = data.find(struct.pack("<HH", group, element))
    if at < 0:
        return data
    vr = data[at + 4:at + 6]
    if vr in VRS:
        len_at, len_size = (at + 8, 4) if vr in LONG_VRS else (at + 6, 2)
    else:
        len_at, len_size = at + 4, 4  # implicit VR
    (length,) = struct.unpack("<I" if len_size == 4 else "<H", data[len_at:len_at + len_size])
    value_at = len_at + len_size
    if draw(st.booleans()) or length == 0xFFFFFFFF:
        new_len = draw(st.sampled_from([0, 1, 2, 4, 0xFFFF, max(length - 2, 0), length + 2]))
        if len_size == 4 and draw(st.booleans()):
            new_len = draw(st.sampled_from([0xFFFFFFFF, 0x7FFFFFFF, new_len]))
        new_len &= (1 << (8 * len_size)) - 1  # length + 2 of a (spurious) tag near the type's maximum wraps
        return data[:len_at] + struct.pack("<I" if len_size == 4 else "<H", new_len) + data[value_at:]
    n = min(length, 16)
    value = draw(st.one_of(st.binary(min_size=n, max_size=n),
                           st.sampled_from([b"-1", b"0", b"NaN", b"1e309", b"\\", b"-0.0\\0", b"999999",
                                            b"\xff\xff", b"\x00\x00", b"MONOCHROME1", b"RGB", b"1.2.3"])
                           .map(lambda v: (v + b" " * n)[:n])))
    return data[:value_at] + value + data[value_at + len(value):]


@st.composite
def dicom_dataset_edit(draw, data: bytes) -> bytes:
    """Set one tag to an odd value with pydicom and re-encode (unencodable values: unchanged)."""
    import pydicom

    keyword = draw(st.sampled_from(["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                                    "PixelRepresentation", "SamplesPerPixel", "NumberOfFrames",
                                    "PhotometricInterpretation", "WindowCenter", "WindowWidth",
                                    "RescaleSlope", "RescaleIntercept", "PixelSpacing", "PatientAge",
                                    "VOILUTFunction", "PlanarConfiguration"]))
    value = draw(st.one_of(st.integers(-70000, 70000), st.sampled_from([0, 1, 8, 16, 32, 65535]),
                           floats(allow_nan=True).map(lambda x: f"{x:.6g}"[:16]),
                           st.sampled_from(["", "RGB", "MONOCHROME1", "PALETTE COLOR", "SIGMOID", "-1", "0",
                                            "1e309", "abc", "1\\2\\3"])))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about each odd value it is given
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            setattr(ds, keyword, value)
            buf = io.BytesIO()
            ds.save_as(buf)
        return buf.getvalue()
    except Exception:  # the writer refused the value: keep the seed
        return data


def dicom_strategy() -> st.SearchStrategy[bytes]:
    """Seed DICOMs with byte edits, tag value/length edits, re-encoded odd values, or both."""
    seeds = st.sampled_from(dicom_seeds())
    return st.one_of(seeds.flatmap(mutated_bytes), seeds.flatmap(dicom_tag_edit),
                     seeds.flatmap(dicom_dataset_edit),
                     seeds.flatmap(dicom_tag_edit).flatmap(mutated_bytes))


@functools.lru_cache(maxsize=None)
def image_seeds() -> list[bytes]:
    import cv2

    rng = np.random.default_rng(0)
    grey8 = rng.integers(0, 256, (24, 16), dtype=np.uint8)
    grey16 = rng.integers(0, 4096, (24, 16), dtype=np.uint16)
    rgb, rgba = np.dstack([grey8] * 3), np.dstack([grey8] * 4)
    out = [cv2.imencode(".png", a)[1].tobytes() for a in (grey8, grey16, rgb, rgba)]
    out.append(cv2.imencode(".jpg", grey8)[1].tobytes())
    return out


@st.composite
def _png_header_edit(draw, data: bytes) -> bytes:
    """Odd width/height/bit depth/colour type in the IHDR chunk (its CRC left stale or not)."""
    if not data.startswith(b"\x89PNG"):
        return data
    at = 16  # IHDR data: width(4) height(4) depth colour compression filter interlace
    field_at, size = draw(st.sampled_from([(at, 4), (at + 4, 4), (at + 8, 1), (at + 9, 1), (at + 12, 1)]))
    value = draw(st.sampled_from([0, 1, 2, 3, 4, 6, 8, 16, 255, 65535, 1 << 20, 0x7FFFFFFF, 0xFFFFFFFF]))
    value &= (1 << (8 * size)) - 1
    out = data[:field_at] + value.to_bytes(size, "big") + data[field_at + size:]
    if draw(st.booleans()):
        import zlib

        out = out[:29] + zlib.crc32(out[12:29]).to_bytes(4, "big") + out[33:]
    return out


def image_strategy() -> st.SearchStrategy[bytes]:
    """Seed PNG/JPEGs with byte edits, IHDR header edits, or both."""
    seeds = st.sampled_from(image_seeds())
    return st.one_of(seeds.flatmap(mutated_bytes), seeds.flatmap(_png_header_edit),
                     seeds.flatmap(_png_header_edit).flatmap(mutated_bytes))
