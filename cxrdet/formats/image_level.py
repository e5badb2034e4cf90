"""The image-level view of the predictions: one probability per class for every image.

Columns ``image_id,p_abnormal,p_0,...,p_13``. ``p_k`` is the highest score of class k among the
image's detections after TTA/ensemble fusion and before the gate (0 when the class was not
detected), so it is the detector's own multi-label classification. ``p_abnormal`` is the gate's
P(abnormal); it is empty (NaN) when inference ran without a gate. Images that failed to read
have no row (even with ``--on-error normal``: there is no evidence to report).

``cxrdet infer --classifier`` appends one ``clf_<class>`` column per class of the image-level
classifier (its probability; the class name with characters other than letters, digits, ``-``
and ``_`` replaced by ``_``) after the fixed columns.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.classes import NUM_FINDINGS
from cxrdet.detections import Detections
from cxrdet.errors import UserError
from cxrdet.formats import atomic
from cxrdet.formats.csvrows import read_text
from cxrdet.formats.labels import physical_lines

CLASS_COLUMNS = [f"p_{k}" for k in range(NUM_FINDINGS)]
IMAGE_LEVEL_COLUMNS = ["image_id", "p_abnormal", *CLASS_COLUMNS]
CLASSIFIER_PREFIX = "clf_"


def classifier_column(class_name: str) -> str:
    """``Nodule/Mass`` -> ``clf_Nodule_Mass``: the column of a classifier class."""
    return CLASSIFIER_PREFIX + "".join(c if c.isalnum() or c in "-_" else "_" for c in class_name)


def _extra_columns(names) -> list[str]:
    return [c for c in dict.fromkeys(names) if c.startswith(CLASSIFIER_PREFIX)]


def class_max_scores(det: Detections) -> np.ndarray:
    """Per finding class, the highest detection score (0 where there is none): shape [14]."""
    out = np.zeros(NUM_FINDINGS, dtype=np.float64)
    finding = (det.class_ids >= 0) & (det.class_ids < NUM_FINDINGS)
    np.maximum.at(out, det.class_ids[finding], det.scores[finding])
    return out


def image_level_row(image_id: str, det: Detections, p_abnormal: float | None) -> dict:
    """One CSV row for an image from its fused (ungated) detections and the gate's p."""
    row = {"image_id": image_id, "p_abnormal": np.nan if p_abnormal is None else float(p_abnormal)}
    row.update(zip(CLASS_COLUMNS, class_max_scores(det).tolist()))
    return row


def image_level_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows -> a frame with exactly :data:`IMAGE_LEVEL_COLUMNS`, sorted by image_id."""
    extra = _extra_columns(k for row in rows for k in row)
    df = pd.DataFrame(rows, columns=IMAGE_LEVEL_COLUMNS + extra)
    return df.sort_values("image_id", kind="stable").reset_index(drop=True)


def write_image_level(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """Write the CSV atomically (:mod:`cxrdet.formats.atomic`); ``clf_*`` columns after the fixed ones."""
    return atomic.write_frame(path, frame[IMAGE_LEVEL_COLUMNS + _extra_columns(frame.columns)], float_format="%.6g")


def read_image_level(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check an image-level CSV (columns, unique ids, probabilities in [0, 1])."""
    text = read_text(path)  # UTF-8 checked (line named), BOM dropped
    try:  # cells as text: pandas' own number parsing turns '999...9' into an int no float holds
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"cannot read image-level CSV {path}: {e}") from e
    missing = [c for c in IMAGE_LEVEL_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(
            f"{path}: expected columns {','.join(IMAGE_LEVEL_COLUMNS)}, missing {','.join(missing)}; "
            "write it with `cxrdet infer --image-level-out`"
        )
    ids = df["image_id"].str.strip()
    dup = ids.duplicated(keep="first").to_numpy()
    if dup.any() or (ids == "").any():
        i = int(np.flatnonzero(dup | (ids == "").to_numpy())[0])
        line = int(physical_lines(Path(path), len(df))[i])
        what = "is empty" if ids.iat[i] == "" else f"{ids.iat[i]!r} appears twice"
        raise UserError(f"{path} line {line}: image_id {what}; each image has one row")
    raw = df[["p_abnormal", *CLASS_COLUMNS]]
    values = np.column_stack([raw[c].map(_probability).to_numpy(dtype=np.float64) for c in raw.columns])
    bad = np.isinf(values)  # _probability marks a bad cell with inf
    if bad.any():
        i = int(np.flatnonzero(bad.any(axis=1))[0])
        line = int(physical_lines(Path(path), len(df))[i])
        cell = raw.iat[i, int(np.flatnonzero(bad[i])[0])]
        raise UserError(f"{path} line {line}: probabilities must be numbers in [0, 1] (or empty), found {cell!r}")
    out = pd.DataFrame({"image_id": ids.to_numpy(dtype=object)})
    out[raw.columns] = values
    return out[IMAGE_LEVEL_COLUMNS]


def _probability(cell: str) -> float:
    """A cell's probability: NaN when empty (no gate ran), inf when not a number in [0, 1]."""
    text = cell.strip()
    if text.lower() in ("", "nan"):
        return np.nan
    try:
        p = float(text)
    except ValueError:
        return np.inf
    return p if 0.0 <= p <= 1.0 else np.inf
