"""Label frames for tests, built from a few records (``from label_fixtures import labels_frame``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrdet.classes import CLASS_NAMES, NUM_FINDINGS
from cxrdet.formats.labels import COORD_COLUMNS, LABEL_COLUMNS


def labels_frame(rows: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """A label frame (LABEL_COLUMNS) from records: class_name from class_id, rad_id R1, boxes NaN
    when absent."""
    df = pd.DataFrame(rows).copy()
    if "class_name" not in df.columns:
        df["class_name"] = [CLASS_NAMES[int(c)] for c in df["class_id"]]
    if "rad_id" not in df.columns:
        df["rad_id"] = "R1"
    for c in COORD_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    df["class_id"] = df["class_id"].astype(np.int64)
    df[COORD_COLUMNS] = df[COORD_COLUMNS].astype(np.float64)
    df["image_id"] = df["image_id"].astype(object)
    return df[LABEL_COLUMNS].reset_index(drop=True)


def class_coverage(specs) -> np.ndarray:
    """Number of planned findings per class_id 0..13 of synth ImageSpecs."""
    counts = np.zeros(NUM_FINDINGS, dtype=int)
    for s in specs:
        for c in s.findings:
            counts[c] += 1
    return counts
