"""Metadata-only pass over a DICOM folder (no pixels decoded): a META.csv in seconds.

``cxrdet prepare`` writes META.csv as a by-product; this pass is for looking at a new archive
(sizes, bit depths, photometric mix, transfer syntaxes) before committing to a full prepare.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm import tqdm

from cxrdet.dicomio.errors import BadDicomError
from cxrdet.dicomio.meta import META_COLUMNS, read_metadata
from cxrdet.formats.failures import FailureLog
from cxrdet.preprocess.cache import CacheReader
from cxrdet.preprocess.features import pixel_features


def collect_metadata(paths: list[Path], failures: FailureLog) -> pd.DataFrame:
    """META.csv rows of ``paths`` (sorted by image id); unreadable files go to ``failures``."""
    rows = []
    for path in tqdm(paths, unit="file", desc="metadata", disable=None):
        try:
            rows.append(read_metadata(path))
        except BadDicomError as e:
            failures.add(path.name, e.reason)
    frame = pd.DataFrame(rows, columns=META_COLUMNS).sort_values("image_id", kind="stable")
    for col in ("rows", "columns", "bits_stored"):
        frame[col] = frame[col].astype("Int64")
    return frame.reset_index(drop=True)


def features_from_cache(cache: CacheReader) -> pd.DataFrame:
    """Recompute ``px_*`` features from the cached pixels (e.g. after the feature set changed)."""
    rows = [{"image_id": image_id, **pixel_features(cache.read(image_id)[0])}
            for image_id in tqdm(cache.ids, unit="img", desc="features", disable=None)]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=["image_id"])
