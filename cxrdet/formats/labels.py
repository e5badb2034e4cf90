"""The VinBigData label CSV: reading with validation, and per-image views.

A label frame has the columns :data:`LABEL_COLUMNS`, one row per box per reader, coordinates in
original DICOM pixels (see :mod:`cxrdet.boxes`). "No finding" rows (class_id 14) carry NaN
coordinates. :func:`read_labels` checks every row and reports all bad ones by CSV line (the
header is line 1); it never drops a row silently.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.classes import CLASS_NAMES, NO_FINDING, NORMAL_BOX, NUM_CLASSES
from cxrdet.detections import Detections
from cxrdet.errors import UserError
from cxrdet.formats.csvrows import FIELD_SIZE_LIMIT, read_text, unclosed_quote_line

LABEL_COLUMNS = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
COORD_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]
MAX_REPORTED = 20  # bad rows shown in one error message; the total count is always given


def read_csv_cells(path: os.PathLike | str, skipinitialspace: bool = False) -> pd.DataFrame:
    """Every cell as a string ('' when empty), so validation sees exactly what the file holds.

    pandas parses (fast on a 67,000-row train.csv); what it refuses for a reason a line shows
    (undecodable bytes, a quote never closed) is said naming that line.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found; pass the path of an existing CSV file")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=skipinitialspace)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty; expected a header line and rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        line = unclosed_quote_line(read_text(path))  # read_text: a UserError naming the line of a bad byte
        if line is not None:
            raise UserError(f"{path}:{line}: a quote (\") opened on this line is never closed (the field runs to "
                            "the end of the file); remove the stray quote or close it") from None
        raise UserError(f"{path}: not a readable CSV file ({e}); fix the file's format") from None


def physical_lines(path: Path, n_rows: int) -> np.ndarray:
    """The file line on which each data row of :func:`read_csv_cells` starts (header is row 0).

    pandas skips blank and whitespace-only lines and a quoted field may span lines, so
    ``row + 2`` is wrong as soon as either occurs; the csv module's ``line_num`` (the line a
    record ENDS on) gives the truth. Called only when there is an error to report, so the fast
    path pays nothing. Falls back to ``row + 2`` if the two parsers disagree on the row count.
    """
    starts = []
    if csv.field_size_limit() < FIELD_SIZE_LIMIT:  # pandas read the file: so must this
        csv.field_size_limit(FIELD_SIZE_LIMIT)
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        prev_end = 0
        for rec in reader:
            if len(rec) > 1 or (rec and rec[0].strip()):  # pandas drops blank records
                starts.append(prev_end + 1)
            prev_end = reader.line_num
    lines = np.array(starts[1:], dtype=np.int64)  # starts[0] is the header
    return lines if len(lines) == n_rows else np.arange(n_rows, dtype=np.int64) + 2


def bad_rows_error(path: os.PathLike | str, problems: list[tuple[int, str]], fix: str) -> UserError:
    """One UserError listing ``(line, reason)`` problems sorted by line: the first few and the count."""
    problems = sorted(problems)
    shown = "\n".join(f"  {path}:{line}: {reason}" for line, reason in problems[:MAX_REPORTED])
    more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    return UserError(f"{path}: {len(problems)} bad row(s):\n{shown}{more}\n{fix}")


def _check_columns(path: Path, df: pd.DataFrame) -> None:
    missing = [c for c in LABEL_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(
            f"{path}:1: missing column(s) {missing}; expected header "
            f"{','.join(LABEL_COLUMNS)}, found {','.join(map(str, df.columns))}"
        )


def _parse_class_ids(raw: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """class_id strings -> (int array with -1 where invalid, valid mask)."""
    num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    ok = np.isfinite(num) & (num == np.round(num)) & (num >= 0) & (num < NUM_CLASSES)
    return np.where(ok, num, -1).astype(np.int64), ok


def _row_problems(df: pd.DataFrame, image_sizes: dict | None) -> list[tuple[int, str]]:
    """Vectorized checks; returns ``(row index, reason)`` for every bad row (0 = first data row)."""
    problems: list[tuple[int, str]] = []

    def add(mask: np.ndarray, reason) -> None:
        for i in np.flatnonzero(mask):
            problems.append((int(i), reason(i) if callable(reason) else reason))

    ids = df["image_id"].str.strip()
    add((ids == "").to_numpy(), "empty image_id")
    cid, cid_ok = _parse_class_ids(df["class_id"])
    add(~cid_ok, lambda i: f"class_id {df['class_id'].iat[i]!r} is not an integer in 0..14")
    names = df["class_name"].str.strip().to_numpy()
    expected = np.array(CLASS_NAMES, dtype=object)[np.where(cid_ok, cid, 0)]
    add(cid_ok & (names != expected),
        lambda i: f"class_name {names[i]!r} does not match class_id {cid[i]} "
        f"(expected {CLASS_NAMES[cid[i]]!r})")

    raw = df[COORD_COLUMNS]
    empty = (raw.apply(lambda s: s.str.strip()) == "").to_numpy()
    xy = raw.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    finding = cid_ok & (cid != NO_FINDING)
    normal = cid_ok & (cid == NO_FINDING)
    add(normal & ~empty.all(axis=1),
        "'No finding' (class_id 14) row has coordinates; leave x_min,y_min,x_max,y_max empty")
    add(finding & empty.any(axis=1), lambda i: f"finding {CLASS_NAMES[cid[i]]!r} has empty coordinates")
    bad_num = finding & ~empty.any(axis=1) & ~np.isfinite(xy).all(axis=1)
    add(bad_num, lambda i: f"coordinates {list(raw.iloc[i])} are not all finite numbers")
    good = finding & np.isfinite(xy).all(axis=1)
    with np.errstate(invalid="ignore"):
        add(good & (xy[:, 0] >= xy[:, 2]), lambda i: f"x_min {xy[i, 0]:g} >= x_max {xy[i, 2]:g}")
        add(good & (xy[:, 1] >= xy[:, 3]), lambda i: f"y_min {xy[i, 1]:g} >= y_max {xy[i, 3]:g}")
        add(good & (xy[:, :2] < 0).any(axis=1), lambda i: f"negative coordinate in {xy[i].tolist()}")
    if image_sizes:
        hw = np.array([image_sizes.get(k, (np.inf, np.inf)) for k in ids], dtype=np.float64)
        hw = hw.reshape(-1, 2)
        outside = good & ((xy[:, 2] > hw[:, 1]) | (xy[:, 3] > hw[:, 0]))
        add(outside, lambda i: f"box {xy[i].tolist()} extends outside the image "
            f"(height {hw[i, 0]:g}, width {hw[i, 1]:g})")
    return problems


def read_labels(path: os.PathLike | str, image_sizes: dict[str, tuple[int, int]] | None = None) -> pd.DataFrame:
    """Read and validate a VinBigData label CSV.

    ``image_sizes`` maps image_id -> ``(rows, columns)`` of the original DICOM; when given,
    boxes are checked to lie inside their image (images missing from it are not checked, so a
    metadata file lacking a few failed DICOMs does not block the rest). Any bad row raises a
    :class:`UserError` listing the CSV lines, what is wrong and the fix.

    Returns a frame with :data:`LABEL_COLUMNS`: ``class_id`` int64, coordinates float64 (NaN for
    class 14), ``image_id``/``class_name``/``rad_id`` strings. Row order is the file's.
    """
    path = Path(path)
    df = read_csv_cells(path, skipinitialspace=True)
    _check_columns(path, df)
    if len(df) == 0:
        raise UserError(f"{path}: the file has a header but no rows; expected one row per box per reader")
    problems = _row_problems(df, image_sizes)
    if problems:
        lines = physical_lines(path, len(df))
        raise bad_rows_error(
            path, [(int(lines[i]), reason) for i, reason in problems],
            "Fix these rows (VinBigData train.csv: one row per box per reader; 'No finding' rows have "
            "class_id 14 and empty coordinates), then rerun.",
        )
    out = pd.DataFrame({
        "image_id": df["image_id"].str.strip().astype(object),
        "class_name": df["class_name"].str.strip().astype(object),
        "class_id": _parse_class_ids(df["class_id"])[0],
        "rad_id": df["rad_id"].str.strip().astype(object),
    })
    for c in COORD_COLUMNS:
        out[c] = pd.to_numeric(df[c].str.strip().replace("", np.nan), errors="coerce").astype(np.float64)
    return out


def image_sizes_from_meta(meta_csv_path: os.PathLike | str) -> dict[str, tuple[int, int]]:
    """image_id -> ``(rows, columns)`` from a META.csv written by ``cxrdet prepare``."""
    path = Path(meta_csv_path)
    df = read_csv_cells(path, skipinitialspace=True)
    missing = [c for c in ("image_id", "rows", "columns") if c not in df.columns]
    if missing:
        raise UserError(f"{path}:1: missing column(s) {missing}; expected a META.csv from `cxrdet prepare`")
    rows = pd.to_numeric(df["rows"], errors="coerce").to_numpy(dtype=np.float64)
    cols = pd.to_numeric(df["columns"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(rows) & np.isfinite(cols) & (rows > 0) & (cols > 0))
    if bad.any():
        lines = physical_lines(path, len(df))
        problems = [(int(lines[i]), f"rows {df['rows'].iat[i]!r}, columns {df['columns'].iat[i]!r} "
                     "are not positive numbers") for i in np.flatnonzero(bad)]
        raise bad_rows_error(path, problems, "Regenerate META.csv with `cxrdet prepare`.")
    ids = df["image_id"].str.strip()
    return {k: (int(r), int(c)) for k, r, c in zip(ids, rows, cols)}


def image_level_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """Image x 15 binary matrix (index image_id in first-seen order, columns 0..14, int8).

    Column c < 14 is 1 when any reader marked class c on the image; column 14 is 1 when the
    image has no finding box at all (a normal image), so each row is consistent.
    """
    ids = pd.unique(labels["image_id"])
    codes = pd.Index(ids).get_indexer(labels["image_id"])
    mat = np.zeros((len(ids), NUM_CLASSES), dtype=np.int8)
    cid = labels["class_id"].to_numpy(dtype=np.int64)
    finding = cid != NO_FINDING
    mat[codes[finding], cid[finding]] = 1
    mat[:, NO_FINDING] = (mat[:, :NO_FINDING].sum(axis=1) == 0).astype(np.int8)
    return pd.DataFrame(mat, index=pd.Index(ids, name="image_id"), columns=list(range(NUM_CLASSES)))


def labels_by_image(labels: pd.DataFrame, include_no_finding: bool = False) -> dict[str, Detections]:
    """Boxes of each image as :class:`Detections` (scores 1.0), every image of the frame present.

    Finding boxes only by default (what a detector trains on), so a normal image maps to empty
    Detections; with ``include_no_finding`` class-14 rows appear with the box ``(0, 0, 1, 1)``.
    """
    out = {k: Detections.empty() for k in pd.unique(labels["image_id"])}
    cid = labels["class_id"].to_numpy(dtype=np.int64)
    keep = np.ones(len(labels), bool) if include_no_finding else cid != NO_FINDING
    sub = labels[keep]
    boxes = sub[COORD_COLUMNS].to_numpy(dtype=np.float64).copy()
    sub_cid = cid[keep]
    boxes[sub_cid == NO_FINDING] = NORMAL_BOX
    for image_id, idx in sub.groupby("image_id", sort=False).indices.items():
        out[image_id] = Detections(boxes[idx], np.ones(len(idx)), sub_cid[idx])
    return out
