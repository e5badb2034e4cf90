"""Kaggle submission CSV (DESIGN.md §4): PredictionString formatting, parsing, atomic writing.

``image_id,PredictionString``, every image exactly once; a PredictionString is groups of six
tokens ``class_id confidence x_min y_min x_max y_max`` in ORIGINAL DICOM pixels. Class-14 rows
are always written as ``14 p 0 0 1 1``. An empty PredictionString means "no detections".
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.boxes import clip_boxes
from cxrdet.classes import NO_FINDING, NUM_CLASSES
from cxrdet.detections import Detections
from cxrdet.errors import UserError
from cxrdet.labels import bad_rows_error

HEADER = ["image_id", "PredictionString"]
DECIMALS = 4  # 1e-4 px and 1e-4 confidence: far below what changes an IoU or the ranking much


def _fmt(x: float, decimals: int) -> str:
    s = f"{x:.{decimals}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def format_prediction_string(dets: Detections, decimals: int = DECIMALS) -> str:
    """Detections -> ``"c p x0 y0 x1 y1 ..."`` (highest confidence first; class 14 as ``0 0 1 1``)."""
    dets = dets.sorted()
    parts = []
    for c, p, box in zip(dets.class_ids.tolist(), dets.scores.tolist(), dets.boxes.tolist()):
        coords = "0 0 1 1" if c == NO_FINDING else " ".join(_fmt(v, decimals) for v in box)
        parts.append(f"{c} {_fmt(p, decimals)} {coords}")
    return " ".join(parts)


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


def _prepare(image_id: str, dets: Detections, hw: tuple[int, int] | None) -> tuple[Detections, int]:
    """Validate scores, clip to the original image, drop boxes left empty by clipping."""
    if not (np.isfinite(dets.scores).all() and ((dets.scores >= 0) & (dets.scores <= 1)).all()):
        raise ValueError(f"image {image_id}: confidences must be finite and in [0, 1]")
    if not np.isfinite(dets.boxes).all():
        raise ValueError(f"image {image_id}: non-finite box coordinates")
    if hw is None or len(dets) == 0:
        return dets, 0
    finding = dets.class_ids != NO_FINDING
    boxes = dets.boxes.copy()
    boxes[finding] = clip_boxes(boxes[finding], hw)
    keep = ~finding | ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    return Detections(boxes, dets.scores, dets.class_ids).select(keep), int((~keep).sum())


def write_submission(path: os.PathLike | str, predictions: Mapping[str, Detections],
                     image_ids: Sequence[str], orig_sizes: Mapping[str, tuple[int, int]] | None = None,
                     *, missing: str = "error", decimals: int = DECIMALS) -> Path:
    """Write the submission atomically (temp file + ``os.replace``), one row per ``image_ids``.

    ``orig_sizes`` (image_id -> (rows, columns)): finding boxes are clipped inside the original
    image; a box lying wholly outside it is dropped with a warning. ``missing``: what to do
    for an image without predictions: ``"error"`` (UserError), ``"normal"`` (write
    ``14 1 0 0 1 1``) or ``"empty"`` (empty PredictionString). Predictions for ids outside
    ``image_ids`` or duplicated ids are a UserError.
    """
    if missing not in ("error", "normal", "empty"):
        raise ValueError(f"missing must be 'error', 'normal' or 'empty', got {missing!r}")
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
    normal = Detections(np.array([[0.0, 0.0, 1.0, 1.0]]), np.array([1.0]), np.array([NO_FINDING]))
    fill = normal if missing == "normal" else Detections.empty()
    rows, dropped = [], 0
    for k in ids:
        hw = None if orig_sizes is None else orig_sizes.get(k)
        if orig_sizes is not None and hw is None:
            raise UserError(f"{path}: no original size for image {k!r}; sizes must cover every image")
        dets, n = _prepare(k, predictions.get(k, fill), hw)
        dropped += n
        rows.append((k, format_prediction_string(dets, decimals)))
    if dropped:
        warnings.warn(f"{path}: {dropped} box(es) lay wholly outside their image and were dropped",
                      stacklevel=2)
    atomic_write_csv(path, HEADER, rows)
    return path


def atomic_write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    """Write a CSV via a temp file in the same folder and ``os.replace``: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a submission is meant to be shared
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        raise bad_rows_error(path, problems, "Fix these rows (DESIGN.md §4), then rerun.") from None
    row_of_group = np.repeat(np.arange(len(ids)), counts)
    reported: set[int] = set()
    for k, reason in group_problems(v):
        row = int(row_of_group[k])
        if row not in reported:  # the first bad box of each row
            reported.add(row)
            first = k - int(np.searchsorted(row_of_group, row))
            problems.append((lines[row], reason.replace(f"box {k + 1} ", f"box {first + 1} ", 1)))
    if problems:
        raise bad_rows_error(path, problems, "Fix these rows (DESIGN.md §4), then rerun.")
    frame = pd.DataFrame({"image_id": np.repeat(np.array(ids, dtype=object), counts),
                          "class_id": v[:, 0].astype(np.int64), "score": v[:, 1]})
    frame[["x_min", "y_min", "x_max", "y_max"]] = v[:, 2:]
    return (frame, ids) if with_ids else frame


def _read_rows(path: Path, problems: list[tuple[int, str]]):
    """Rows split into tokens; structural problems (fields, ids, token count) go to ``problems``."""
    ids, lines, tokens = [], [], []
    first_line: dict[str, int] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != HEADER:
            raise UserError(f"{path}:1: header {header} is not {','.join(HEADER)}; "
                            "a submission starts with the line image_id,PredictionString")
        for row in reader:
            line = reader.line_num
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
