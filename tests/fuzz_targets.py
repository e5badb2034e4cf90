"""Every reader of a file a user hands us, as a fuzz target: valid seed files, the strategy that
breaks them, the call, the errors it may raise, and what an accepted result must satisfy.

The property (``run_example``): the reader returns a valid result or raises one of the
project's own error types; anything else escaping is a bug in the reader. Shared by
``tests/test_fuzz_readers.py`` and ``benchmarks/fuzz_readers.py``.
"""

from __future__ import annotations

import functools
import io
import json
import math
import shutil
import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from hypothesis import strategies as st

from fuzz_strategies import floats, csv_documents, mutated_bytes, mutated_json, mutated_text

from cxrdet.dicomio.errors import BadDicomError
from cxrdet.errors import InputFailure, UserError


@dataclass
class Target:
    name: str
    file_name: str  # what the fuzzed bytes are written as
    strategy: Callable[[], st.SearchStrategy[bytes]]  # built lazily: seeds may need files
    read: Callable[[Path], Any]
    check: Callable[[Any], None] = lambda result: None  # asserts an accepted result is valid
    allowed: tuple[type[BaseException], ...] = (UserError,)
    setup: Callable[[Path], None] = lambda folder: None  # companion files beside the fuzzed one
    named: Callable[[Path], Path] = lambda path: path  # what a UserError must name (file or folder)
    valid: Callable[[], list[bytes]] = list  # unmutated seed files, which must be accepted


class Escaped(AssertionError):
    """A reader let a foreign exception escape (or accepted an invalid result)."""


@functools.lru_cache(maxsize=None)
def workdir() -> Path:
    """One scratch folder per process (hypothesis examples cannot use pytest's tmp_path)."""
    return Path(tempfile.mkdtemp(prefix="cxrdet-fuzz-"))


def run_example(target: Target, data: bytes) -> str:
    """Write ``data``, read it; ``"accepted"`` or ``"refused"``, or raise :class:`Escaped`."""
    folder = workdir() / target.name
    if not folder.is_dir():
        folder.mkdir(parents=True)
        target.setup(folder)
    path = folder / target.file_name
    path.write_bytes(data)
    try:
        result = target.read(path)
    except target.allowed as e:
        if isinstance(e, UserError) and str(target.named(path)) not in str(e):
            raise Escaped(f"{target.name}: UserError does not name {target.named(path)}: {e}") from e
        return "refused"
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # BaseException: a Rust extension's panic is not an Exception
        raise Escaped(f"{target.name}: {type(e).__name__} escaped: {e}") from e
    try:
        target.check(result)
    except AssertionError as e:
        raise Escaped(f"{target.name}: accepted an invalid result: {e}") from e
    return "accepted"


def _mutants(seeds: list[bytes], structured: st.SearchStrategy[bytes] | None = None, text: bool = True):
    mutate = mutated_text if text else mutated_bytes
    parts = [st.sampled_from(seeds).flatmap(lambda s: mutate(s.decode()) if text else mutate(s))]
    if text:
        parts.append(st.sampled_from(seeds).flatmap(mutated_bytes))
    if structured is not None:
        parts.append(structured)
    return st.one_of(*parts)


ids = st.sampled_from(["a1", "b2", "c3", "0005e8e3701dfb1dd93d53e2ff537b6e", " d4 ", "e5"])
numbers = st.one_of(floats(-10, 3000).map(lambda x: f"{x:.2f}"), st.integers(-5, 3000).map(str))
probabilities = st.one_of(floats(0, 1).map(lambda x: f"{x:.6g}"), floats().map(repr), st.just(""))

# ------------------------------------------------------------------------------ label CSV
LABELS = (
    "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
    "a1,Aortic enlargement,0,R9,691.0,1375.0,1653.0,1831.0\n"
    "a1,Cardiomegaly,3,R10,1000,1500,1600,1900\n"
    "b2,No finding,14,R1,,,,\n"
    "c3,Pleural effusion,10,R8,10.5,20.25,300,400\n"
)


def _check_labels(df) -> None:
    cid = df["class_id"].to_numpy()
    assert ((cid >= 0) & (cid <= 14)).all(), cid
    xy = df[["x_min", "y_min", "x_max", "y_max"]].to_numpy()
    finding = cid != 14
    assert np.isfinite(xy[finding]).all() and (xy[finding, 2] > xy[finding, 0]).all()
    assert (df["image_id"].str.strip() != "").all()


def _labels() -> Target:
    from cxrdet.formats.labels import LABEL_COLUMNS, read_labels

    cells = {c: ids if c == "image_id" else st.sampled_from(["Cardiomegaly", "No finding", "Aortic enlargement"])
             if c == "class_name" else st.sampled_from(["0", "3", "14"]) if c == "class_id" else
             st.just("R1") if c == "rad_id" else numbers for c in LABEL_COLUMNS}
    return Target("labels", "train.csv", lambda: _mutants([LABELS.encode()], csv_documents(LABEL_COLUMNS, cells)),
                  read_labels, _check_labels, valid=lambda: [LABELS.encode()])


# ------------------------------------------------------------------------------ FOLDS.csv
FOLDS = "image_id,fold\r\na1,0\r\nb2,1\r\nc3,2\r\nd4,0\r\n"


def _check_folds(folds) -> None:
    assert folds and all(isinstance(k, str) and k.strip() == k and k for k in folds), folds
    assert all(isinstance(v, int) and v >= 0 for v in folds.values()), folds


def _folds() -> Target:
    from cxrdet.formats.folds import read_folds

    structured = csv_documents(["image_id", "fold"], {"image_id": ids, "fold": st.integers(-2, 5).map(str)})
    return Target("folds", "FOLDS.csv", lambda: _mutants([FOLDS.encode()], structured), read_folds, _check_folds,
                  valid=lambda: [FOLDS.encode()])


# ------------------------------------------------------------------------------ submission CSV
SUBMISSION = (
    "image_id,PredictionString\r\n"
    "a1,0 0.9 691 1375 1653 1831 3 0.5 1000 1500 1600 1900\r\n"
    "b2,14 1 0 0 1 1\r\n"
    "c3,\r\n"
    "d4,10 0.25 10.5 20.25 300 400\r\n"
)
prediction_strings = st.lists(
    st.tuples(st.integers(-1, 15), floats(-0.5, 1.5), floats(-10, 2000), floats(-10, 2000),
              floats(-10, 3000), floats(-10, 3000)).map(lambda t: " ".join(f"{x:g}" for x in t)),
    max_size=5).map(" ".join)


def _check_submission(result) -> None:
    frame, listed = result
    v = frame[["class_id", "score", "x_min", "y_min", "x_max", "y_max"]].to_numpy(dtype=np.float64)
    assert np.isfinite(v).all()
    assert ((v[:, 0] >= 0) & (v[:, 0] <= 14)).all() and ((v[:, 1] >= 0) & (v[:, 1] <= 1)).all()
    assert ((v[:, 4] > v[:, 2]) & (v[:, 5] > v[:, 3])).all()
    assert len(set(listed)) == len(listed) and all(k.strip() == k and k for k in listed)


def _submission() -> Target:
    from cxrdet.formats.submission import HEADER, read_submission

    structured = csv_documents(HEADER, {"image_id": ids, "PredictionString": prediction_strings})
    return Target("submission", "sub.csv", lambda: _mutants([SUBMISSION.encode()], structured),
                  lambda p: read_submission(p, with_ids=True), _check_submission,
                  valid=lambda: [SUBMISSION.encode()])


def _merge_submission() -> Target:
    """``cxrdet merge-submissions`` reads shard CSVs with its own row reader."""
    from cxrdet.formats.submission import HEADER
    from cxrdet.inference.merge import _check_prediction, merge_rows

    structured = csv_documents(HEADER, {"image_id": ids, "PredictionString": prediction_strings})
    return Target("merge_submission", "shard.csv", lambda: _mutants([SUBMISSION.encode()], structured),
                  lambda p: merge_rows([str(p)], HEADER, _check_prediction), valid=lambda: [SUBMISSION.encode()])


# ------------------------------------------------------------------------------ PNG sizes CSV
PNG_SIZES = "image_id,dim0,dim1\na1,2880,2304\nb2,3072,2540\nc3,2048,2048\n"


def _check_sizes(sizes) -> None:
    assert all(isinstance(k, str) and k for k in sizes), sizes
    assert all(isinstance(h, int) and isinstance(w, int) and h >= 1 and w >= 1 for h, w in sizes.values())


def _png_sizes() -> Target:
    from cxrdet.inference.sources import read_png_sizes

    structured = csv_documents(["image_id", "dim0", "dim1"], {"image_id": ids, "dim0": numbers, "dim1": numbers})
    return Target("png_sizes", "sizes.csv", lambda: _mutants([PNG_SIZES.encode()], structured),
                  read_png_sizes, _check_sizes, valid=lambda: [PNG_SIZES.encode()])


# ------------------------------------------------------------------------------ image-level CSV
def _image_level_seed() -> str:
    from cxrdet.formats.image_level import IMAGE_LEVEL_COLUMNS

    rows = [",".join(IMAGE_LEVEL_COLUMNS)]
    for i, image_id in enumerate(["a1", "b2", "c3"]):
        p = "" if i == 2 else f"{0.1 * (i + 1):.6g}"
        rows.append(",".join([image_id, p] + [f"{(i + k) % 10 / 10:.6g}" for k in range(14)]))
    return "\n".join(rows) + "\n"


def _check_image_level(df) -> None:
    v = df.drop(columns="image_id").to_numpy(dtype=np.float64)
    assert (np.isnan(v) | ((v >= 0) & (v <= 1))).all()
    assert df["image_id"].is_unique


def _image_level() -> Target:
    from cxrdet.formats.image_level import IMAGE_LEVEL_COLUMNS, read_image_level

    cells = {c: ids if c == "image_id" else probabilities for c in IMAGE_LEVEL_COLUMNS}
    return Target("image_level", "il.csv",
                  lambda: _mutants([_image_level_seed().encode()], csv_documents(IMAGE_LEVEL_COLUMNS, cells)),
                  read_image_level, _check_image_level, valid=lambda: [_image_level_seed().encode()])


# ------------------------------------------------------------------------------ provenance JSON
PROVENANCE = {
    "format": "cxrdet-infer-provenance", "version": 1,
    "runs": [{"models": [{"artifact": "/runs/f0/export", "folds": "/data/FOLDS.csv", "fold": 0}],
              "folds": "/data/FOLDS.csv", "fold": 0, "shard": "0/2", "tta": "none", "image_ids": ["a1", "b2"]}],
}


def _check_provenance(runs) -> None:
    for run in runs:
        assert all(isinstance(i, str) for i in run["image_ids"]), run
        for m in run["models"]:
            assert isinstance(m["artifact"], str) and isinstance(m["folds"], str), m
            assert isinstance(m["fold"], int) and not isinstance(m["fold"], bool), m


def _provenance() -> Target:
    from cxrdet.formats.provenance import read_provenance

    return Target("provenance", "sub.provenance.json", lambda: mutated_json(PROVENANCE), read_provenance,
                  _check_provenance, valid=lambda: [json.dumps(PROVENANCE).encode()])


# ------------------------------------------------------------------------------ gate schema JSON
@functools.lru_cache(maxsize=None)
def _gate_files() -> tuple[dict, bytes]:
    """A tiny trained gate's schema (parsed) and booster bytes."""
    import pandas as pd

    from cxrdet.gate.model import MODEL_FILE, SCHEMA_FILE, GateClassifier

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"meta_age": rng.uniform(20, 80, 40), "px_mean": rng.uniform(0, 1, 40),
                      "meta_sex": pd.Categorical(rng.choice(["F", "M"], 40))})
    y = (X["px_mean"] > 0.5).astype(int).to_numpy()
    folder = workdir() / "gate_seed"
    GateClassifier(n_estimators=5, n_folds=2, early_stopping_rounds=2, n_jobs=1).fit(X, y).save(folder)
    return json.loads((folder / SCHEMA_FILE).read_text()), (folder / MODEL_FILE).read_bytes()


def _check_gate(gate) -> None:
    assert math.isfinite(gate.low_) and math.isfinite(gate.high_) and 0 <= gate.low_ < gate.high_
    assert all(isinstance(n, str) for n in gate.schema_.names)
    assert list(gate.schema_.kinds) == gate.schema_.names  # names unique, each with a kind
    assert all(k in ("float", "category") for k in gate.schema_.kinds.values())
    assert all(all(isinstance(c, str) for c in v) for v in gate.schema_.categories.values())


def _gate_schema() -> Target:
    from cxrdet.gate.model import MODEL_FILE, GateClassifier

    def setup(folder: Path) -> None:
        (folder / MODEL_FILE).write_bytes(_gate_files()[1])

    return Target("gate_schema", "gate_schema.json", lambda: mutated_json(_gate_files()[0]),
                  lambda p: GateClassifier.load(p.parent), _check_gate, setup=setup, named=lambda p: p.parent,
                  valid=lambda: [json.dumps(_gate_files()[0]).encode()])


# ------------------------------------------------------------------------------ detector config JSON
def _check_config(cfg) -> None:
    import dataclasses

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kind = {"str": str, "int": int, "float": (int, float), "bool": bool}.get(str(f.type))
        if kind is not None:
            assert isinstance(value, kind) and (kind is bool or not isinstance(value, bool)), (f.name, value)
            if kind != str and kind is not bool:
                assert math.isfinite(value), (f.name, value)
        elif str(f.type) == "list[str]":
            assert isinstance(value, list) and all(isinstance(x, str) for x in value), (f.name, value)
        else:  # list[int] / list[float]
            assert isinstance(value, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                   and math.isfinite(x) for x in value), (f.name, value)


def _detector_config() -> Target:
    from cxrdet.detector.config import DetectorConfig

    seed = DetectorConfig(cache="c.h5", labels="train.csv", folds="FOLDS.csv", out="run").to_dict()
    return Target("detector_config", "config.json", lambda: mutated_json(seed), DetectorConfig.load, _check_config,
                  valid=lambda: [json.dumps(seed).encode()])


# ------------------------------------------------------------------------------ DICOM bytes
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
def _dicom_tag_edit(draw, data: bytes) -> bytes:
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
        return data[:len_at] + struct.pack("<I" if len_size == 4 else "<H", new_len) + data[value_at:]
    n = min(length, 16)
    value = draw(st.one_of(st.binary(min_size=n, max_size=n),
                           st.sampled_from([b"-1", b"0", b"NaN", b"1e309", b"\\", b"-0.0\\0", b"999999",
                                            b"\xff\xff", b"\x00\x00", b"MONOCHROME1", b"RGB", b"1.2.3"])
                           .map(lambda v: (v + b" " * n)[:n])))
    return data[:value_at] + value + data[value_at + len(value):]


@st.composite
def _dicom_dataset_edit(draw, data: bytes) -> bytes:
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


def _dicom_strategy() -> st.SearchStrategy[bytes]:
    seeds = st.sampled_from(dicom_seeds())
    return st.one_of(seeds.flatmap(mutated_bytes), seeds.flatmap(_dicom_tag_edit),
                     seeds.flatmap(_dicom_dataset_edit),
                     seeds.flatmap(_dicom_tag_edit).flatmap(mutated_bytes))


def _check_dicom(result) -> None:
    image, meta = result
    assert image.ndim == 2 and image.dtype == np.float32 and image.size > 0, image.shape
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1, (image.min(), image.max())


def _read_dicom_both(path: Path):
    from cxrdet.dicomio.meta import read_metadata
    from cxrdet.dicomio.read import read_dicom

    read_metadata(path)
    return read_dicom(path, reduce_to=8)


def _dicom() -> Target:
    return Target("dicom", "x.dcm", _dicom_strategy, _read_dicom_both, _check_dicom, allowed=(BadDicomError,),
                  valid=dicom_seeds)


# ------------------------------------------------------------------------------ PNG / JPEG bytes
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


def _check_png(grey) -> None:
    assert grey.dtype == np.uint8 and grey.ndim == 2 and grey.size > 0, (grey.dtype, grey.shape)


def _png() -> Target:
    from cxrdet.inference.sources import read_png

    def strategy():
        seeds = st.sampled_from(image_seeds())
        return st.one_of(seeds.flatmap(mutated_bytes), seeds.flatmap(_png_header_edit),
                         seeds.flatmap(_png_header_edit).flatmap(mutated_bytes))

    return Target("png", "a1.png", strategy, read_png, _check_png, allowed=(InputFailure,), valid=image_seeds)


TARGET_FACTORIES = {
    "labels": _labels, "folds": _folds, "submission": _submission, "merge_submission": _merge_submission,
    "png_sizes": _png_sizes, "image_level": _image_level, "provenance": _provenance,
    "gate_schema": _gate_schema, "detector_config": _detector_config, "dicom": _dicom, "png": _png,
}


@functools.lru_cache(maxsize=None)
def target(name: str) -> Target:
    return TARGET_FACTORIES[name]()


def cleanup() -> None:
    shutil.rmtree(workdir(), ignore_errors=True)
