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
from cxrdet.detections import Detections, detections_from_frame
from cxrdet.errors import UserError
from cxrdet.formats.folds import fold_members, read_folds
from cxrdet.formats.submission import HEADER as SUBMISSION_HEADER, read_submission


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
    from cxrdet.preprocess.tables import features_path

    path = Path(pixel_features) if pixel_features else features_path(meta)
    if not path.is_file():
        raise UserError(
            f"{path}: pixel features file not found; expected the pixel features CSV that `cxrdet prepare` "
            "writes beside META.csv (<meta stem>_pixel_features.csv). Fix: point to that file or train on "
            "metadata alone"
        )
    return read_table(path, ["image_id"], "use the <meta stem>_pixel_features.csv of `cxrdet prepare`")


def read_training_labels(path: Path) -> pd.DataFrame:
    from cxrdet.formats.labels import read_labels

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
    """Fold number of each id from FOLDS.csv (image_id,fold); every labelled id must have one."""
    folds = read_folds(path)
    absent = [i for i in ids if i not in folds]
    if absent:
        raise UserError(
            f"{path}: {len(absent)} labelled image(s) have no fold, e.g. {absent[:5]}. Fix: make "
            "the folds from the same label CSV (`cxrdet split`)"
        )
    return np.array([folds[i] for i in ids], dtype=np.int64)


def read_detections(path: Path, ids: list[str]) -> dict[str, Detections]:
    """Detections of the labelled images from a submission CSV or a detection CSV."""
    if not path.is_file():
        raise UserError(f"{path}: detections file not found")
    with open(path, newline="") as f:
        header = [h.strip() for h in f.readline().strip().split(",")]
    if header == SUBMISSION_HEADER:
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
    """Refuse in-fold detections (see OOF_HELP of ``cxrdet train-gate``).

    With the provenance record ``cxrdet infer`` writes beside its CSV, each image is checked
    against the detector(s) that predicted it. Without one, only a weak check is possible: an
    image passes when ANY of the given detector ``runs`` held it out (or, with no run, a warning).
    """
    from cxrdet.formats.provenance import provenance_path, read_provenance

    record = provenance_path(det_path)
    if record.is_file():
        return check_with_provenance(read_provenance(record), dets, det_path, record)
    if not runs:
        print(f"train-gate: WARNING: cannot check that {det_path} is out-of-fold (no detector run folder given and no "
              f"{record.name} beside it); in-fold detections make the gate over-trust the detector",
              file=sys.stderr)
        return {"verified": False, "runs": []}
    print(f"train-gate: WARNING: no {record.name} beside {det_path}, so it is not known which run predicted "
          "which image; only checking that some given detector run held each image out. Make the detections "
          "with `cxrdet infer --folds F --fold K` (+ merge-submissions) for the strict check", file=sys.stderr)
    held_out: set[str] = set()
    for run in runs:
        held_out |= held_out_ids(Path(run))
    in_fold = sorted(i for i in dets if i not in held_out)
    if in_fold:
        raise UserError(
            f"{det_path}: {len(in_fold)} image(s) were in the training folds of every given "
            f"detector run ({', '.join(runs)}), e.g. {in_fold[:5]}: their detections are in-fold. "
            "Fix: give detections predicted by the run that held each image out (one run per fold, "
            "each predicting its own validation fold), or train the gate without detector evidence"
        )
    return {"verified": True, "strict": False, "runs": list(runs), "n_images_checked": len(dets)}


# How each kind of evidence is made out-of-fold: the fix an in-fold refusal names.
OOF_FIX = {
    "detector": ("predict each fold with the run that held it out (`cxrdet infer --model runs/fK/export "
                 "--folds FOLDS.csv --fold K --out oof_K.csv`), merge them with `cxrdet merge-submissions`, "
                 "or train the gate without detector evidence"),
    "classifier": ("predict each fold with the classifier that held it out (`cxrdet classify --model "
                   "runs/cK/export --folds FOLDS.csv --fold K --out probs_K.csv`), merge them with `cxrdet "
                   "merge-probabilities`, or train the gate without --classifier-probs"),
}
WRITER = {"detector": "`cxrdet infer` (+ `cxrdet merge-submissions`)",
          "classifier": "`cxrdet classify` (+ `cxrdet merge-probabilities`)"}


def check_with_provenance(runs: list[dict], ids, path: Path, record: Path, kind: str = "detector") -> dict:
    """Every image of ``ids`` must be held out by every ``kind`` artifact (detector or classifier)
    that predicted it, according to the provenance record beside ``path``."""
    producer = {image_id: k for k, run in enumerate(runs) for image_id in run["image_ids"]}
    unknown = sorted(i for i in ids if i not in producer)
    if unknown:
        raise UserError(
            f"{path}: {len(unknown)} image(s) are not in its provenance record {record}, e.g. "
            f"{unknown[:5]}, so which {kind} predicted them is unknown. Fix: write the file with "
            f"{WRITER[kind]}, which keep the record in step, or delete the stale record"
        )
    cache: dict[tuple[str, int], set[str]] = {}
    for k, run in enumerate(runs):
        mine = {i for i in ids if producer[i] == k}
        for model in run["models"] if mine else []:
            key = (str(model["folds"]), int(model["fold"]))
            if key not in cache:
                cache[key] = fold_ids_of(model, record, kind)
            in_fold = sorted(mine - cache[key])
            if in_fold:
                raise UserError(
                    f"{path}: {len(in_fold)} image(s) were predicted by {kind} {model['artifact']}, "
                    f"which trained on them (it held out only fold {model['fold']} of {model['folds']}), "
                    f"e.g. {in_fold[:5]}: their {kind} evidence is in-fold (record: {record}). Fix: "
                    f"{OOF_FIX[kind]}"
                )
    models = sorted({m["artifact"] for run in runs for m in run["models"]})
    return {"verified": True, "strict": True, "provenance": str(record), "models": models,
            "n_images_checked": len(list(ids))}


def read_classifier_evidence(path: Path, ids: list[str]) -> tuple[pd.DataFrame, dict]:
    """Out-of-fold classifier probabilities of the labelled images, checked against the
    provenance record ``cxrdet classify`` writes beside them (required: the strict check)."""
    from cxrdet.formats.probabilities import read_probabilities
    from cxrdet.formats.provenance import provenance_path, read_provenance
    from cxrdet.gate.features import classifier_frame

    probs = read_probabilities(path)
    record = provenance_path(path)
    if not record.is_file():
        raise UserError(
            f"{path}: no provenance record {record.name} beside it, so it is not known which classifier predicted "
            f"which image. Fix: {OOF_FIX['classifier']} (both write the record)")
    frame = probs.frame()
    wanted = set(ids)
    present = [i for i in frame.index if i in wanted]
    check = check_with_provenance(read_provenance(record), present, path, record, kind="classifier")
    missing = len(ids) - len(present)
    if missing:
        print(f"train-gate: {missing} labelled image(s) have no row in {path}; their classifier features "
              "are missing (NaN)", file=sys.stderr)
    check["class_names"] = list(probs.class_names)
    return classifier_frame(frame.loc[present]), check


def fold_ids_of(model: dict, record: Path, kind: str = "detector") -> set[str]:
    """The validation-fold ids of a detector (or classifier) artifact named in a provenance record."""
    if not model["folds"]:
        trainer = "train" if kind == "detector" else "train-classifier"
        raise UserError(
            f"{record}: {kind} {model['artifact']} was trained without a folds file, so it held out "
            f"no image and none of its predictions is out-of-fold. Fix: train per fold "
            f"(`cxrdet {trainer} --folds FOLDS.csv --fold K`) and predict each run's own fold"
        )
    return validation_ids(Path(model["folds"]), int(model["fold"]),
                          f"the folds file {kind} {model['artifact']} was trained with (see {record})")


def validation_ids(folds_path: Path, fold: int, what: str) -> set[str]:
    """The ids of ``fold`` in a FOLDS.csv (image_id,fold); ``what`` names the file in errors."""
    try:
        folds = read_folds(folds_path)
    except UserError as e:
        raise UserError(f"{what}: {e}") from None
    return set(fold_members(folds, fold))


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
    return validation_ids(folds_path, int(cfg.get("fold", 0)), f"the folds file named in {cfg_path}")
