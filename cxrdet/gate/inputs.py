"""Inputs of ``cxrdet train-gate``: reading and cross-checking META, pixel features, labels,
folds and detections. Every problem is a UserError naming the file and the fix.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.classes import NO_FINDING
from cxrdet.detections import Detections
from cxrdet.errors import UserError
from cxrdet.gate.features import detections_from_frame


def read_table(path: Path, required: list[str], fix: str) -> pd.DataFrame:
    """A CSV as strings (empty cells stay empty, so missing never turns into 0)."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable CSV ({e}); {fix}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}; found {list(df.columns)}. Fix: {fix}")
    return df


def read_pixel_table(meta: Path, pixel_features: str | None) -> pd.DataFrame:
    """The pixel features CSV, by default ``<meta stem>_pixel_features.csv`` beside META.csv."""
    path = Path(pixel_features) if pixel_features else meta.with_name(f"{meta.stem}_pixel_features.csv")
    if not path.is_file():
        raise UserError(
            f"{path}: pixel features file not found. Fix: pass --pixel-features (written by "
            "`cxrdet prepare` beside META.csv) or train on metadata alone with --no-pixel"
        )
    return read_table(path, ["image_id"], "use the <meta stem>_pixel_features.csv of `cxrdet prepare`")


def read_training_labels(path: Path) -> pd.DataFrame:
    from cxrdet.labels import read_labels

    return read_labels(path)


def abnormal_targets(labels: pd.DataFrame, rule: str) -> pd.Series:
    """1 = abnormal per image: any reader marked a finding, or a majority of its readers did."""
    finding = (labels["class_id"].to_numpy(np.int64) != NO_FINDING).astype(np.int64)
    frame = pd.DataFrame({"image_id": labels["image_id"].astype(str).to_numpy(),
                          "rad_id": labels["rad_id"].astype(str).to_numpy(), "finding": finding})
    per_reader = frame.groupby(["image_id", "rad_id"], sort=False)["finding"].max()
    by_image = per_reader.groupby(level="image_id", sort=False)
    if rule == "any":
        return by_image.max().astype(np.int64)
    return (by_image.sum() * 2 > by_image.count()).astype(np.int64)


def restrict_meta(meta: pd.DataFrame, y: pd.Series, meta_path: Path, labels_path: Path) -> pd.DataFrame:
    """META rows of the labelled images, in label order; every labelled image must have one."""
    meta = meta.assign(image_id=meta["image_id"].str.strip())
    have = set(meta["image_id"])
    absent = [i for i in y.index if i not in have]
    if absent:
        raise UserError(
            f"{len(absent)} image(s) of {labels_path} have no row in {meta_path}, e.g. {absent[:5]}. "
            "Fix: run `cxrdet prepare` on the DICOM folder that holds all labelled images, or "
            "pass the label CSV of the prepared images"
        )
    dup = meta["image_id"].duplicated()
    if dup.any():
        raise UserError(f"{meta_path}: image ids listed twice, e.g. {meta.loc[dup, 'image_id'].tolist()[:5]}")
    extra = len(have) - len(y)
    if extra:
        print(f"train-gate: {extra} image(s) of {meta_path} have no labels and are not used", file=sys.stderr)
    return meta.set_index("image_id", drop=False).loc[list(y.index)].reset_index(drop=True)


def read_fold_column(path: Path, ids: list[str]) -> np.ndarray:
    """Fold number of each id from FOLDS.csv (image_id,fold)."""
    df = read_table(path, ["image_id", "fold"], "make it with `cxrdet split --labels CSV --out FOLDS.csv`")
    fold = pd.to_numeric(df["fold"], errors="coerce")
    bad = np.flatnonzero(~np.isfinite(fold.to_numpy(np.float64)))
    if len(bad):
        raise UserError(f"{path}: fold must be an integer, see CSV line(s) {[int(i) + 2 for i in bad[:5]]}")
    folds = pd.Series(fold.astype(np.int64).to_numpy(), index=df["image_id"].str.strip())
    absent = [i for i in ids if i not in folds.index]
    if absent:
        raise UserError(
            f"{path}: {len(absent)} labelled image(s) have no fold, e.g. {absent[:5]}. Fix: make "
            "the folds from the same label CSV (`cxrdet split`)"
        )
    return folds[~folds.index.duplicated()].reindex(ids).to_numpy()


def read_detections(path: Path, ids: list[str]) -> dict[str, Detections]:
    """Detections of the labelled images from a submission CSV or a detection CSV."""
    if not path.is_file():
        raise UserError(f"{path}: detections file not found")
    with open(path, newline="") as f:
        header = [h.strip() for h in f.readline().strip().split(",")]
    if header == ["image_id", "PredictionString"]:
        from cxrdet.submission import read_submission

        frame, listed = read_submission(path, with_ids=True)
    else:
        frame = read_table(path, ["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"],
                           "pass a submission CSV or a detection CSV with those columns")
        frame = frame.assign(**{c: pd.to_numeric(frame[c], errors="coerce")
                                for c in ["class_id", "score", "x_min", "y_min", "x_max", "y_max"]})
        if frame[["class_id", "score"]].isna().any().any():
            raise UserError(f"{path}: class_id and score must be numbers in every row")
        listed = ids  # a detection CSV cannot list empty images: absent means no boxes
    n14 = int((frame["class_id"] == NO_FINDING).sum())
    if n14:
        # the detector never predicts class 14: these rows come from a gate, which has also
        # removed the boxes of the images it called normal, so the evidence would be censored
        raise UserError(
            f"{path}: {n14} class-14 ('No finding') row(s); this is a gated submission. Fix: pass "
            "the UNGATED out-of-fold detections (`cxrdet infer` without --gate)"
        )
    wanted = set(ids)
    dets = {k: v for k, v in detections_from_frame(frame, [i for i in listed if i in wanted]).items() if k in wanted}
    missing = len(ids) - len(dets)
    if missing:
        print(f"train-gate: {missing} labelled image(s) have no row in {path}; their detector "
              "features are missing (NaN)", file=sys.stderr)
    return dets


def check_out_of_fold(runs: list[str], dets: dict[str, Detections], det_path: Path) -> dict:
    """Refuse detections of images that every given detector run trained on (see OOF_HELP)."""
    if not runs:
        print(f"train-gate: WARNING: cannot check that {det_path} is out-of-fold (no --detector-run); "
              "in-fold detections make the gate over-trust the detector", file=sys.stderr)
        return {"verified": False, "runs": []}
    held_out: set[str] = set()
    for run in runs:
        held_out |= held_out_ids(Path(run))
    in_fold = sorted(i for i in dets if i not in held_out)
    if in_fold:
        raise UserError(
            f"{det_path}: {len(in_fold)} image(s) were in the training folds of every given "
            f"detector run ({', '.join(runs)}), e.g. {in_fold[:5]}: their detections are in-fold. "
            "Fix: give detections predicted by the run that held each image out (one run per fold, "
            "each predicting its own validation fold), or drop --detections"
        )
    return {"verified": True, "runs": list(runs), "n_images_checked": len(dets)}


def held_out_ids(run: Path) -> set[str]:
    """Validation-fold image ids of a detector run, from its config.json (folds + fold)."""
    candidates = [run / "config.json", run / "export" / "config.json"]
    cfg_path = next((c for c in candidates if c.is_file()), None)
    if cfg_path is None:
        raise UserError(f"detector run {run}: no config.json (looked at {[str(c) for c in candidates]})")
    cfg = json.loads(cfg_path.read_text())
    if not cfg.get("folds"):
        raise UserError(
            f"{cfg_path}: the run names no folds file, so no image is known to be held out of its "
            "training. Fix: train the detector per fold (`cxrdet train --folds FOLDS.csv --fold k`)"
        )
    folds_path = Path(cfg["folds"])
    if not folds_path.is_absolute() and not folds_path.is_file() and (run / folds_path).is_file():
        folds_path = run / folds_path  # a relative path written from inside the run folder
    df = read_table(folds_path, ["image_id", "fold"], f"the folds file named in {cfg_path}")
    fold = pd.to_numeric(df["fold"], errors="coerce")
    return set(df.loc[fold == int(cfg.get("fold", 0)), "image_id"].str.strip())
