"""Kaggle submission CSV: PredictionString formatting, parsing, atomic writing.

``image_id,PredictionString``, every image exactly once; a PredictionString is groups of six
tokens ``class_id confidence x_min y_min x_max y_max`` in ORIGINAL DICOM pixels. Class-14 rows
are always written as ``14 p 0 0 1 1``. An empty PredictionString means "no detections".
"""

from __future__ import annotations

import csv
import functools
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.boxes import clip_boxes
from cxrdet.classes import NO_FINDING, NORMAL_BOX, NUM_CLASSES
from cxrdet.detections import Detections, det_frame, normal_detection
from cxrdet.errors import UserError
from cxrdet.formats import atomic
from cxrdet.formats.csvrows import csv_records
from cxrdet.formats.labels import bad_rows_error

HEADER = ["image_id", "PredictionString"]
FIX_ROWS = ("Fix these rows (a PredictionString is groups of 'class_id confidence x_min y_min x_max "
            "y_max' in original pixels; 'No finding' is '14 p 0 0 1 1'), then rerun.")
DECIMALS = 4  # 1e-4 px and 1e-4 confidence: far below what changes an IoU or the ranking much


def _fmt(x: float, decimals: int) -> str:
    """One value as the file shows it; only for values '%.15g' cannot print plainly (rare)."""
    s = f"{x:.{decimals}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def round_decimals(a: np.ndarray, decimals: int) -> np.ndarray:
    """Round to ``decimals`` exactly as ``f"{x:.{decimals}f}"`` does, vectorized; ``-0`` becomes 0.

    The writer tests boxes on these values, so what it keeps is what the reader will parse.
    ``np.round`` scales by 10**decimals first, which can flip a value lying within an ulp of a
    half; those few are redone with Python's correctly rounded ``round``.
    """
    a = np.asarray(a, dtype=np.float64)
    y = a * 10.0 ** decimals
    r = np.round(a, decimals)
    with np.errstate(invalid="ignore"):
        near_half = np.abs(y - np.floor(y) - 0.5) <= 4 * np.spacing(np.abs(y))
    if near_half.any():
        r[near_half] = [round(x, decimals) for x in a[near_half].tolist()]
    return r + 0.0  # IEEE: -0.0 + 0.0 == +0.0


def format_prediction_string(dets: Detections, decimals: int = DECIMALS) -> str:
    """Detections -> ``"c p x0 y0 x1 y1 ..."`` (highest confidence first; class 14 as ``0 0 1 1``).

    Values are rounded to ``decimals`` (as ``f"{x:.{decimals}f}"``) with trailing zeros and
    ``-0`` removed. Formatting is one C-level ``%`` over all values: per-value Python
    formatting was most of ``cxrdet infer``'s host time (~4x slower for 300 boxes).
    """
    n = len(dets)
    if n == 0:
        return ""
    order = np.argsort(-dets.scores, kind="stable")
    cls = dets.class_ids[order]
    raw = np.empty((n, 5), dtype=np.float64)
    raw[:, 0] = dets.scores[order]
    raw[:, 1:] = dets.boxes[order]
    raw[cls == NO_FINDING, 1:] = NORMAL_BOX
    vals = round_decimals(raw, decimals)
    with np.errstate(invalid="ignore"):
        fixed_ok = decimals <= _TABLE_MAX_DECIMALS and bool(
            ((vals >= 0) & (vals < 2.0 ** 52 / 10 ** decimals)).all())
    if fixed_ok:
        return _format_fixed(cls, vals, decimals)
    return _format_general(cls, vals, raw, decimals)


_TABLE_MAX_DECIMALS = 5  # a table of 10**5 fraction strings is ~6 MB; more decimals use '%.15g'


@functools.lru_cache(maxsize=None)
def _fraction_table(decimals: int) -> np.ndarray:
    """Fraction k -> its text after the integer part: 2500 -> '.25', 0 -> '' (for 4 decimals)."""
    return np.array([f".{f:0{decimals}d}".rstrip("0").rstrip(".") for f in range(10 ** decimals)],
                    dtype=object)


def _format_fixed(cls: np.ndarray, vals: np.ndarray, decimals: int) -> str:
    """Non-negative values as integer part (``%d``) + a looked-up fraction: the fast path."""
    scale = 10 ** decimals
    k = np.rint(vals * scale).astype(np.int64)  # exact: vals is the float nearest k / scale
    args = np.empty((len(cls), 11), dtype=object)
    args[:, 0] = cls
    args[:, 1::2] = k // scale
    args[:, 2::2] = _fraction_table(decimals)[k % scale]
    return " ".join(["%d" + " %d%s" * 5] * len(cls)) % tuple(args.ravel().tolist())


def _format_general(cls: np.ndarray, vals: np.ndarray, raw: np.ndarray, decimals: int) -> str:
    """Any values: '%.15g' of the rounded value, per-value ``_fmt`` where that is not exact.

    '%.15g' prints a value rounded to ``decimals`` exactly and without trailing zeros when it
    has at most 15 significant digits and needs no exponent.
    """
    mag = np.abs(vals)
    with np.errstate(invalid="ignore"):
        plain = (mag == 0) | ((mag >= 1e-4) & (mag < 10.0 ** (15 - decimals)))
    args = np.empty((len(cls), 6), dtype=object)
    args[:, 0] = cls
    args[:, 1:] = vals
    args = args.ravel().tolist()
    codes = ["%d", "%.15g", "%.15g", "%.15g", "%.15g", "%.15g"] * len(cls)
    flat_raw = raw.ravel().tolist()
    for i in np.flatnonzero(~plain.ravel()).tolist():
        j = i + i // 5 + 1  # the class column shifts value i of [n, 5] to i + row + 1 of [n, 6]
        codes[j], args[j] = "%s", _fmt(flat_raw[i], decimals)
    return " ".join(codes) % tuple(args)


class PredictionStringError(ValueError):
    """A malformed PredictionString; the message says where and what."""


def _bad(where: str, msg: str) -> PredictionStringError:
    return PredictionStringError(f"{where}: {msg}" if where else msg)


TOKEN_HELP = "(each box is 'class_id confidence x_min y_min x_max y_max')"


def parse_prediction_string(s: str | float | None, *, where: str = "") -> Detections:
    """``"c p x0 y0 x1 y1 ..."`` -> Detections, strictly validated.

    Raises :class:`PredictionStringError` (a ValueError) naming ``where`` (e.g. ``file:line``)
    for: a token count that is not a multiple of 6, a non-number or NaN/inf, a class_id that is
    not an integer in 0..14, a confidence outside [0, 1], x_max <= x_min or y_max <= y_min.
    Empty / NaN input gives empty Detections.
    """
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return Detections.empty()
    tokens = str(s).split()
    if len(tokens) % 6:
        raise _bad(where, f"{len(tokens)} tokens is not a multiple of 6 {TOKEN_HELP}")
    v = _to_numbers(tokens, where)
    bad = group_problems(v)
    if bad:
        raise _bad(where, bad[0][1])
    return Detections(v[:, 2:], v[:, 1], v[:, 0].astype(np.int64))


def _to_numbers(tokens: list[str], where: str) -> np.ndarray:
    try:
        return np.array(tokens, dtype=np.float64).reshape(-1, 6)
    except ValueError:
        bad = next(t for t in tokens if not _is_float(t))
        raise _bad(where, f"token {bad!r} is not a number") from None


def _is_float(t: str) -> bool:
    try:
        float(t)
    except ValueError:
        return False
    return True


def group_problems(v: np.ndarray) -> list[tuple[int, str]]:
    """``(group index, reason)`` for every invalid 6-number group of ``v`` [N, 6] (vectorized)."""
    c, p, x0, y0, x1, y1 = v.T
    finite = np.isfinite(v).all(axis=1)
    with np.errstate(invalid="ignore"):
        checks = [
            (~finite, lambda k: "NaN or infinite value"),
            (finite & ((c != np.round(c)) | (c < 0) | (c >= NUM_CLASSES)),
             lambda k: f"class_id {c[k]:g} is not an integer in 0..{NUM_CLASSES - 1}"),
            (finite & ((p < 0) | (p > 1)), lambda k: f"confidence {p[k]:g} is outside [0, 1]"),
            (finite & (x1 <= x0), lambda k: f"x_max {x1[k]:g} <= x_min {x0[k]:g}"),
            (finite & (y1 <= y0), lambda k: f"y_max {y1[k]:g} <= y_min {y0[k]:g}"),
        ]
    out: dict[int, str] = {}
    for mask, reason in checks:
        for k in np.flatnonzero(mask):
            if k not in out:  # one reason per group: the first that applies
                out[int(k)] = f"box {k + 1} ({' '.join(f'{x:g}' for x in v[k])}): {reason(k)}"
    return sorted(out.items())


def _check_values(image_id: str, dets: Detections) -> None:
    """What the reader would reject and clipping cannot repair: a bug upstream, named by image."""
    bad_cls = (dets.class_ids < 0) | (dets.class_ids >= NUM_CLASSES)
    if bad_cls.any():
        raise ValueError(f"image {image_id!r}: class_id(s) {sorted(set(dets.class_ids[bad_cls].tolist()))} "
                         f"are not in 0..{NUM_CLASSES - 1}; map detector labels with cxrdet.classes")
    p = dets.scores
    bad_p = ~(np.isfinite(p) & (p >= 0) & (p <= 1))
    if bad_p.any():
        raise ValueError(f"image {image_id!r}: confidences must be finite and in [0, 1], found "
                         f"{p[bad_p][:5].tolist()}")
    if not np.isfinite(dets.boxes[dets.class_ids != NO_FINDING]).all():
        raise ValueError(f"image {image_id!r}: non-finite box coordinates")


def _prepare(image_id: str, dets: Detections, hw: tuple[int, int] | None,
             decimals: int) -> tuple[Detections, int]:
    """Validate; clip to the original image, THEN round as written, THEN drop empty boxes.

    Testing after rounding is what makes write -> read always round-trip: 1023.99996 clipped
    to a 1024-wide image prints as 1024 = x_max. Class 14 is always written ``0 0 1 1``.
    Scores are left unrounded so the order of boxes matches the caller's confidences.
    """
    _check_values(image_id, dets)
    if len(dets) == 0:
        return dets, 0
    finding = dets.class_ids != NO_FINDING
    boxes = dets.boxes.copy()
    if hw is not None:
        boxes[finding] = clip_boxes(boxes[finding], hw)
    boxes = round_decimals(boxes, decimals)
    keep = ~finding | ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    return Detections(boxes, dets.scores, dets.class_ids).select(keep), int((~keep).sum())


def write_submission(path: os.PathLike | str, predictions: Mapping[str, Detections],
                     image_ids: Sequence[str], orig_sizes: Mapping[str, tuple[int, int]] | None = None,
                     *, missing: str = "error", decimals: int = DECIMALS) -> Path:
    """Write the submission atomically (:mod:`cxrdet.formats.atomic`), one row per ``image_ids``.

    ``orig_sizes`` (image_id -> (rows, columns)): finding boxes are clipped inside the original
    image. Boxes are rounded to ``decimals``; a finding box left with no width or height (wholly
    outside the image, inverted, or thinner than the rounding step) is dropped with a warning
    giving the count, so :func:`read_submission` accepts every file written here. A class_id
    outside 0..14, a confidence outside [0, 1] or a non-finite value is a ValueError naming
    the image. ``missing``: what to do
    for an image without predictions: ``"error"`` (UserError), ``"normal"`` (write
    ``14 1 0 0 1 1``) or ``"empty"`` (empty PredictionString). Predictions for ids outside
    ``image_ids`` or duplicated ids are a UserError.
    """
    if missing not in ("error", "normal", "empty"):
        raise ValueError(f"missing must be 'error', 'normal' or 'empty', got {missing!r}")
    if not 0 <= decimals <= 12:
        raise ValueError(f"decimals must be in 0..12, got {decimals}")
    path = Path(path)
    ids = [str(k) for k in image_ids]
    dupes = pd.Index(ids)[pd.Index(ids).duplicated()].unique().tolist()
    if dupes:
        raise UserError(f"{path}: image ids listed more than once: {dupes[:10]}; each image appears once")
    extra = sorted(set(predictions) - set(ids))
    if extra:
        raise UserError(f"{path}: predictions for {len(extra)} image(s) not in the image list, e.g. "
                        f"{extra[:5]}; pass the full list of image ids")
    absent = [k for k in ids if k not in predictions]
    if absent and missing == "error":
        raise UserError(f"{path}: {len(absent)} image(s) have no predictions, e.g. {absent[:5]}; "
                        "predict them, or choose an explicit fill for missing images")
    fill = normal_detection(1.0) if missing == "normal" else Detections.empty()
    rows, dropped = [], 0
    for k in ids:
        hw = None if orig_sizes is None else orig_sizes.get(k)
        if orig_sizes is not None and hw is None:
            raise UserError(f"{path}: no original size for image {k!r}; sizes must cover every image")
        dets, n = _prepare(k, predictions.get(k, fill), hw, decimals)
        dropped += n
        rows.append((k, format_prediction_string(dets, decimals)))
    if dropped:
        warnings.warn(f"{path}: {dropped} box(es) had no width or height once clipped to their image "
                      f"and rounded to {decimals} decimals (x_max <= x_min or y_max <= y_min) and "
                      "were dropped", stacklevel=2)
    return atomic.write_csv(path, HEADER, rows)


def read_submission(path: os.PathLike | str, *, with_ids: bool = False):
    """Read and validate a submission CSV -> detection frame with ``cxrdet.detections.DET_COLUMNS``.

    Every malformed row (bad header, wrong field count, empty or duplicate image_id, any
    PredictionString error) is reported as ``file:line`` in one UserError. With ``with_ids``
    returns ``(frame, image_ids)``, the ids of all rows, including those with an empty
    PredictionString (the metric needs them to tell "no detections" from "no row").
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found; pass the submission CSV written by `cxrdet infer`")
    problems: list[tuple[int, str]] = []
    ids, lines, tokens = _read_rows(path, problems)
    counts = np.array([len(t) // 6 for t in tokens], dtype=np.int64)
    flat = [x for t in tokens for x in t]
    try:
        v = np.array(flat, dtype=np.float64).reshape(-1, 6)
    except ValueError:  # slow path, only for a broken file: check row by row
        for line, t in zip(lines, tokens):
            try:
                parse_prediction_string(" ".join(t))
            except PredictionStringError as e:
                problems.append((line, str(e)))
        raise bad_rows_error(path, problems, FIX_ROWS) from None
    row_of_group = np.repeat(np.arange(len(ids)), counts)
    reported: set[int] = set()
    for k, reason in group_problems(v):
        row = int(row_of_group[k])
        if row not in reported:  # the first bad box of each row
            reported.add(row)
            first = k - int(np.searchsorted(row_of_group, row))
            problems.append((lines[row], reason.replace(f"box {k + 1} ", f"box {first + 1} ", 1)))
    if problems:
        raise bad_rows_error(path, problems, FIX_ROWS)
    frame = det_frame(np.repeat(np.array(ids, dtype=object), counts), v[:, 0], v[:, 1], v[:, 2:])
    return (frame, ids) if with_ids else frame


def _read_rows(path: Path, problems: list[tuple[int, str]]):
    """Rows split into tokens; structural problems (fields, ids, token count) go to ``problems``."""
    ids, lines, tokens = [], [], []
    first_line: dict[str, int] = {}
    records = csv_records(path)
    header = next(records, (1, None))[1]
    if header is None or [h.strip() for h in header] != HEADER:
        raise UserError(f"{path}:1: header {header} is not {','.join(HEADER)}; "
                        "a submission starts with the line image_id,PredictionString")
    for line, row in records:
        if len(row) != 2:
            problems.append((line, f"expected 2 fields (image_id,PredictionString), found {len(row)}"))
            continue
        image_id, t = row[0].strip(), row[1].split()
        if not image_id:
            problems.append((line, "empty image_id"))
        elif image_id in first_line:
            problems.append((line, f"image_id {image_id!r} repeats line {first_line[image_id]}"))
        elif len(t) % 6:
            first_line[image_id] = line
            problems.append((line, f"{len(t)} tokens is not a multiple of 6 {TOKEN_HELP}"))
        else:
            first_line[image_id] = line
            ids.append(image_id)
            lines.append(line)
            tokens.append(t)
    return ids, lines, tokens
