"""META.csv and the pixel-feature CSV, rebuilt from a cache's per-image rows.

Each cached image carries its metadata and feature rows, so after a resume or a merge of
shard caches the CSVs always describe exactly the images in the cache, sorted by image id.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cxrdet.dicomio.meta import META_COLUMNS
from cxrdet.formats.atomic import write_frame
from cxrdet.preprocess.cache import CacheReader

META_EXTRA = ["voi_applied"]  # how the image was windowed; after the fixed META.csv columns
FEATURES_SUFFIX = "_pixel_features.csv"  # beside META.csv, so train-gate finds it without a flag


def meta_frame(cache: CacheReader) -> pd.DataFrame:
    """META.csv rows of the cache (fixed columns first, then ``voi_applied``)."""
    frame = pd.DataFrame(cache.rows("meta"), columns=META_COLUMNS + META_EXTRA)
    for col in ("rows", "columns", "bits_stored"):
        frame[col] = frame[col].astype("Int64")  # integers; <NA> where unknown, never 0
    return frame


def feature_frame(cache: CacheReader) -> pd.DataFrame:
    """``image_id`` + ``px_*`` feature columns, one row per cached image."""
    rows = [{"image_id": image_id, **feats} for image_id, feats in zip(cache.ids, cache.rows("features"))]
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=["image_id"])
    return frame


def features_path(meta: str | os.PathLike) -> Path:
    """The pixel-feature CSV that goes with META.csv ``meta``: ``<meta stem>_pixel_features.csv``."""
    meta = Path(meta)
    return meta.with_name(f"{meta.stem}{FEATURES_SUFFIX}")


def write_tables(cache: CacheReader, meta_out: Path, features_out: Path | None) -> None:
    """Write META.csv and (unless ``features_out`` is None) the pixel-feature CSV, each atomically."""
    write_frame(meta_out, meta_frame(cache))
    if features_out is not None:
        write_frame(features_out, feature_frame(cache))
