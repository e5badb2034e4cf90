"""The gate's feature table and its schema: one code path for training and inference.

``build_features(meta_df, pixel_df, detections)`` turns the preprocessing outputs (META.csv,
``<meta stem>_pixel_features.csv``) and, optionally, the detector's own evidence into one
DataFrame indexed by image_id. Column groups are told apart by prefix:

- ``meta_*``: DICOM metadata. Numbers are floats with missing values kept as NaN (never 0:
  XGBoost learns a direction for "missing", a fake 0 would be read as a real age or size).
  Strings (sex, photometric interpretation, manufacturer, modality) are pandas categoricals for
  XGBoost's native categorical support.
- ``px_*``: pixel statistics of the cached image, as written by ``cxrdet prepare``.
- ``det_*``: per-class maximum score and counts of detections with score >= 0.1 / 0.3 / 0.5,
  plus the same over all classes. Only scores and class ids are used, so the detections may be
  in cache or original pixels. Class 14 rows (a previous gate's "No finding" call) are ignored.
  Scores are first rounded as the submission CSV stores them (``DECIMALS``): train-gate learns
  from out-of-fold detections read back from such a CSV, infer and serve from live scores, and a
  live 0.29996 must count at >= 0.3 as its written "0.3" did.
- ``clf_*``: the image-level classifier's probability per class (``cxrdet classify``), one
  column per class named as in the image-level CSV (:func:`cxrdet.formats.image_level.classifier_column`);
  an image without probabilities gets NaN.

``FeatureSchema`` is the frozen description of a trained model's table (names in order, kinds,
category lists). It encodes a table for XGBoost and refuses one built differently.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxrdet.classes import NUM_FINDINGS
from cxrdet.detections import Detections
from cxrdet.errors import UserError
from cxrdet.formats.image_level import classifier_column
from cxrdet.formats.submission import DECIMALS, round_decimals

# META.csv column -> feature name. Numbers first, then categories; this order is the table's.
META_NUMERIC = {
    "patient_age": "meta_age",
    "rows": "meta_rows",
    "columns": "meta_columns",
    "pixel_spacing_row": "meta_spacing_row",
    "pixel_spacing_col": "meta_spacing_col",
    "bits_stored": "meta_bits_stored",
}
META_CATEGORICAL = {
    "patient_sex": "meta_sex",
    "photometric_interpretation": "meta_photometric",
    "manufacturer": "meta_manufacturer",
    "modality": "meta_modality",
}
META_REQUIRED = ["image_id", *META_NUMERIC, *META_CATEGORICAL]
DET_THRESHOLDS = (0.1, 0.3, 0.5)  # "a few" score levels: weak, medium and confident evidence
# in ablation order: each group is added to the ones before it (train-gate's report)
FEATURE_GROUPS = {"metadata": "meta_", "pixel": "px_", "detector": "det_", "classifier": "clf_"}


def build_features(
    meta_df: pd.DataFrame,
    pixel_df: pd.DataFrame | None = None,
    detections: dict[str, Detections] | None = None,
    classifier: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The gate's feature table, indexed by image_id, in a fixed column order.

    Every image of ``meta_df`` gets a row. ``pixel_df`` must cover them all; an image missing
    from ``detections`` gets NaN detector features (unknown), an image present with no boxes
    gets zeros (the detector looked and found nothing). ``classifier``: probabilities indexed
    by image_id, one ``clf_*`` column per class (:func:`classifier_frame`).
    """
    table = metadata_features(meta_df)
    if pixel_df is not None:
        table = table.join(pixel_table(pixel_df, table.index), how="left")
    if detections is not None:
        table = table.join(detector_features(detections, table.index), how="left")
    if classifier is not None:
        table = table.join(classifier_features(classifier, table.index), how="left")
    return table


def metadata_features(meta_df: pd.DataFrame) -> pd.DataFrame:
    """``meta_*`` features: numbers as float (missing = NaN), strings as categoricals."""
    missing = [c for c in META_REQUIRED if c not in meta_df.columns]
    if missing:
        raise UserError(
            f"metadata table lacks column(s) {missing}; expected the META.csv columns "
            f"{META_REQUIRED}. Fix: regenerate it with `cxrdet prepare --meta-out META.csv`."
        )
    ids = _image_ids(meta_df, "metadata table (META.csv)")
    out = pd.DataFrame(index=pd.Index(ids, name="image_id"))
    for col, name in META_NUMERIC.items():
        out[name] = _numeric(meta_df[col], col, "metadata table (META.csv)")
    for col, name in META_CATEGORICAL.items():
        out[name] = _category_strings(meta_df[col], upper=col != "manufacturer")
    return out


def pixel_table(pixel_df: pd.DataFrame, image_ids: pd.Index) -> pd.DataFrame:
    """The ``px_*`` columns of ``pixel_df`` for ``image_ids`` (all must be present)."""
    where = "pixel features table (<meta stem>_pixel_features.csv)"
    if "image_id" not in pixel_df.columns:
        raise UserError(f"{where} has no image_id column; found {list(pixel_df.columns)[:8]}")
    cols = sorted(c for c in pixel_df.columns if str(c).startswith("px_"))
    if not cols:
        raise UserError(
            f"{where} has no px_* columns. Fix: regenerate it with `cxrdet prepare`, "
            "or train without pixel features."
        )
    px = pixel_df[cols].set_axis(pd.Index(_image_ids(pixel_df, where), name="image_id"))
    absent = image_ids.difference(px.index)
    if len(absent):
        raise UserError(
            f"{where} lacks {len(absent)} of {len(image_ids)} images, e.g. {list(absent[:5])}. "
            "Fix: use the pixel features written by the same `cxrdet prepare` run as META.csv."
        )
    return pd.DataFrame(
        {c: _numeric(px[c], c, where) for c in cols}, index=px.index
    ).reindex(image_ids)


def detector_feature_names() -> list[str]:
    """Names of the ``det_*`` columns, in table order."""
    names = ["det_max"] + [f"det_n{_pct(t)}" for t in DET_THRESHOLDS]
    for c in range(NUM_FINDINGS):
        names.append(f"det_max_c{c:02d}")
        names += [f"det_n{_pct(t)}_c{c:02d}" for t in DET_THRESHOLDS]
    return names


def detector_features(detections: dict[str, Detections], image_ids: pd.Index) -> pd.DataFrame:
    """Per-image detector evidence; images absent from ``detections`` are all NaN."""
    names = detector_feature_names()
    values = np.full((len(image_ids), len(names)), np.nan)
    for row, image_id in enumerate(image_ids):
        det = detections.get(image_id)
        if det is not None:
            values[row] = _evidence(det)
    return pd.DataFrame(values, index=pd.Index(image_ids, name="image_id"), columns=names)


def classifier_frame(probs: pd.DataFrame) -> pd.DataFrame:
    """Probabilities with one column per class name -> the same with ``clf_*`` feature names."""
    names = [classifier_column(str(c)) for c in probs.columns]
    if len(set(names)) != len(names):
        raise UserError(f"classifier classes {list(probs.columns)} give the same feature name twice ({names}); "
                        "rename the classes so they differ in letters or digits")
    return probs.set_axis(names, axis=1)


def classifier_features(probs: pd.DataFrame, image_ids: pd.Index) -> pd.DataFrame:
    """The ``clf_*`` columns of ``probs`` (:func:`classifier_frame`) for ``image_ids``; absent images are NaN."""
    bad = [c for c in probs.columns if not str(c).startswith(FEATURE_GROUPS["classifier"])]
    if bad:
        raise ValueError(f"classifier feature columns must be clf_* names (classifier_frame), got {bad[:4]}")
    values = probs.astype(np.float64)
    values.index = values.index.astype(str)
    return values.reindex(pd.Index(image_ids, name="image_id"))


def _evidence(det: Detections) -> np.ndarray:
    """One image's detector features, in ``detector_feature_names()`` order."""
    keep = (det.class_ids >= 0) & (det.class_ids < NUM_FINDINGS)
    # the precision train-gate saw (module docstring): without it live features skew from trained ones
    scores, classes = round_decimals(det.scores[keep], DECIMALS), det.class_ids[keep]
    per_class = [scores[classes == c] for c in range(NUM_FINDINGS)]
    out = [_max(scores)] + [float((scores >= t).sum()) for t in DET_THRESHOLDS]
    for s in per_class:
        out.append(_max(s))
        out += [float((s >= t).sum()) for t in DET_THRESHOLDS]
    return np.asarray(out)


def feature_group(name: str) -> str:
    """'metadata', 'pixel', 'detector' or 'classifier' for a feature name."""
    for group, prefix in FEATURE_GROUPS.items():
        if name.startswith(prefix):
            return group
    raise ValueError(f"feature {name!r} belongs to no group {FEATURE_GROUPS}")


def _pct(t: float) -> str:
    return f"{int(round(t * 100)):02d}"


def _max(scores: np.ndarray) -> float:
    return float(scores.max()) if len(scores) else 0.0


def _image_ids(df: pd.DataFrame, where: str) -> list[str]:
    ids = df["image_id"].astype("string").str.strip()
    blank = ids.isna().to_numpy(bool) | (ids == "").fillna(True).to_numpy(bool)
    if blank.any():
        lines = [int(i) + 2 for i in np.flatnonzero(blank)[:5]]  # header is CSV line 1
        raise UserError(f"{where} has {int(blank.sum())} row(s) without an image_id (CSV lines {lines})")
    ids = ids.astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise UserError(f"{where} lists image ids more than once, e.g. {sorted(set(dup))[:5]}")
    return ids.tolist()


def _numeric(col: pd.Series, name: str, where: str) -> np.ndarray:
    """Float values; empty cells become NaN, anything else that is not a number is refused."""
    values = pd.to_numeric(col, errors="coerce").to_numpy(np.float64)
    text = col.astype("string").str.strip()
    blank = text.isna().to_numpy(bool) | text.str.lower().isin(["", "nan", "none"]).to_numpy(bool)
    garbage = np.isnan(values) & ~blank
    if garbage.any():
        example = text[garbage].iloc[0]
        raise UserError(
            f"{where}: column {name!r} must be numeric, found {example!r} "
            f"({int(garbage.sum())} such value(s)). Fix: regenerate the table with `cxrdet prepare`."
        )
    return values


def _category_strings(col: pd.Series, upper: bool) -> pd.Categorical:
    """Trimmed strings (codes upper-cased) as a categorical; empty cells are missing."""
    text = col.astype("string").str.strip().str.replace(r"\s+", " ", regex=True)
    if upper:
        text = text.str.upper()
    blank = text.isna().to_numpy(bool) | text.str.upper().isin(["", "NAN", "NONE"]).to_numpy(bool)
    values = np.array([None if b else str(v) for v, b in zip(text, blank)], dtype=object)
    return pd.Categorical(values)


CATEGORY = "category"
FLOAT = "float"


@dataclass
class FeatureSchema:
    """What a trained gate expects: names in order, kind per name, category lists."""

    names: list[str]
    kinds: dict[str, str]  # name -> "float" | "category"
    categories: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_frame(cls, X: pd.DataFrame) -> "FeatureSchema":
        """Schema learned from a training table: categories are the sorted observed values."""
        names = [str(c) for c in X.columns]
        kinds, cats = {}, {}
        for name in names:
            if _is_category_like(X[name]):
                kinds[name] = CATEGORY
                cats[name] = sorted({str(v) for v in X[name].dropna()})
            else:
                kinds[name] = FLOAT
        return cls(names, kinds, cats)

    def to_json(self) -> list[dict]:
        return [
            {"name": n, "kind": self.kinds[n], **({"categories": self.categories[n]} if n in self.categories else {})}
            for n in self.names
        ]

    @classmethod
    def from_json(cls, features: list[dict]) -> "FeatureSchema":
        names = [f["name"] for f in features]
        kinds = {f["name"]: f["kind"] for f in features}
        cats = {f["name"]: list(f["categories"]) for f in features if f["kind"] == CATEGORY}
        return cls(names, kinds, cats)

    def check(self, X: pd.DataFrame, where: str) -> None:
        """Refuse a table whose columns or column kinds differ from the schema."""
        found = [str(c) for c in X.columns]
        fix = (
            "Fix: build the table with cxrdet.gate.features.build_features from the same kinds of "
            "inputs as at training (pixel features and detections given or not, as the schema's "
            "feature groups say), or retrain the gate with `cxrdet train-gate`."
        )
        if found != self.names:
            raise UserError(f"gate features do not match the model in {where}: {_diff(self.names, found)}. {fix}")
        for name in self.names:
            if (self.kinds[name] == CATEGORY) != _is_category_like(X[name]):
                raise UserError(
                    f"gate feature {name!r} of the model in {where}: expected {self.kinds[name]} "
                    f"values, found dtype {X[name].dtype}. {fix}"
                )

    def encode(self, X: pd.DataFrame) -> pd.DataFrame:
        """Floats and fixed-category categoricals; unseen categories become missing (warned)."""
        cols = {}
        for name in self.names:
            if self.kinds[name] == FLOAT:
                cols[name] = pd.to_numeric(X[name], errors="coerce").astype(np.float64).to_numpy()
                continue
            values = X[name].astype(object).where(X[name].notna(), None)
            values = values.map(lambda v: None if v is None else str(v))
            unseen = sorted({v for v in values.dropna() if v not in self.categories[name]})
            if unseen:
                warnings.warn(
                    f"gate feature {name!r}: value(s) {unseen[:5]} were not seen in training; "
                    "treated as missing",
                    stacklevel=3,
                )
            if not self.categories[name]:
                # never seen in training: XGBoost cannot hold an empty category list, and an
                # all-missing column carries the same (no) information
                cols[name] = np.full(len(X), np.nan)
                continue
            known = values.where(values.isin(self.categories[name]), None)
            cols[name] = pd.Categorical(known.to_numpy(), categories=self.categories[name])
        return pd.DataFrame(cols, index=X.index)


def _is_category_like(col: pd.Series) -> bool:
    return isinstance(col.dtype, pd.CategoricalDtype) or not (
        pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype)
    )


def _diff(expected: list[str], found: list[str]) -> str:
    missing = [n for n in expected if n not in found]
    extra = [n for n in found if n not in expected]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} feature(s) {missing[:6]}")
    if extra:
        parts.append(f"{len(extra)} unexpected feature(s) {extra[:6]}")
    if not parts:
        at = next(i for i, (a, b) in enumerate(zip(expected, found)) if a != b)
        parts.append(f"same features in another order: position {at} expected {expected[at]!r}, found {found[at]!r}")
    return f"expected {len(expected)} features, found {len(found)}; " + "; ".join(parts)
