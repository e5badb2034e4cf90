"""``cxrdet train-gate``: train the normal/abnormal gate and write model, schema and report.

Outputs in ``--out``: ``gate.ubj`` + ``gate_schema.json`` (the model, loaded by inference with
``GateClassifier.load``), ``report.json`` (AUC per fold and out-of-fold, zone confusion at the
thresholds, feature importance, ablation, threshold tuning) and ``feature_importance.png``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.detections import Detections
from cxrdet.errors import UserError
from cxrdet.flags import DEFAULT_SEED, RenamedFlag
from cxrdet.formats.atomic import write_frame
from cxrdet.gate.features import FEATURE_GROUPS, META_REQUIRED, build_features, feature_group
from cxrdet.gate.inputs import (
    abnormal_targets,
    check_out_of_fold,
    read_classifier_evidence,
    read_detections,
    read_fold_column,
    read_pixel_table,
    read_table,
    read_training_labels,
    restrict_meta,
)
from cxrdet.gate.model import GateClassifier, library_versions
from cxrdet.gate.report import plot_report, write_report_json, zone_confusion
from cxrdet.gate.rules import DEFAULT_HIGH, DEFAULT_LOW

INTERRUPT_NOTE = "no gate was written (model, schema and report are written at the end); rerun the command"

ABNORMAL_RULES = ("any", "majority")

OOF_HELP = """\
detector evidence (--detections) must be OUT-OF-FOLD: the boxes of every training image must
come from a detector that was not trained on that image. In-fold boxes are confidently right on
the images the detector memorised, so the gate would learn to trust them and fail on new images.
`cxrdet infer` writes <out stem>.provenance.json beside its CSV (which detector, trained on which
fold, predicted which images) and `cxrdet merge-submissions` merges those records; with it beside
--detections, each image is checked against the detector that predicted it and in-fold ones are
refused. Without a record the check is weak: an image passes when ANY --detector-run held it out
(without --detector-run either, only a warning). Give UNGATED detections (no class 14), made
with the same inference settings (TTA, ensemble) that will feed the gate later.

example (3 folds):
  cxrdet split --labels train.csv --n-folds 3 --out FOLDS.csv
  cxrdet train --cache C.h5 --labels train.csv --folds FOLDS.csv --fold K --out runs/fK   (K=0,1,2)
  cxrdet infer --cache C.h5 --model runs/fK/export --folds FOLDS.csv --fold K --out oof_K.csv
  cxrdet merge-submissions --out oof.csv oof_0.csv oof_1.csv oof_2.csv
  cxrdet train-gate --meta META.csv --labels train.csv --folds FOLDS.csv --out gate \\
      --detections oof.csv          (checked with oof.provenance.json, written by the merge)
"""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train the XGBoost normal/abnormal gate (the 2-class filter) on metadata, pixel "
        "features and optionally out-of-fold detector evidence.",
        epilog=OOF_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--meta", required=True, help="META.csv written by `cxrdet prepare --meta-out`")
    p.add_argument("--pixel-features", default=None,
                   help="pixel features CSV (default: <meta stem>_pixel_features.csv beside --meta)")
    p.add_argument("--no-pixel", action="store_true", help="train without pixel features")
    p.add_argument("--labels", required=True, help="VinBigData label CSV (train.csv) of the images to train on")
    p.add_argument("--abnormal-rule", choices=ABNORMAL_RULES, default="any",
                   help="image is abnormal if ANY reader marked a finding (default: boxes a reader "
                   "drew are ground truth for the metric, so silencing them costs AP) or if a "
                   "MAJORITY of its readers did")
    p.add_argument("--out", required=True, help="output folder for the gate (model, schema, report)")
    p.add_argument("--folds", default=None,
                   help="FOLDS.csv (image_id,fold) from `cxrdet split`; use the detector's folds "
                   "so OOF detector evidence and gate folds agree (default: stratified K-fold)")
    p.add_argument("--n-folds", type=int, default=5, help="folds when --folds is not given (default 5)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the folds and of XGBoost (default {DEFAULT_SEED})")
    p.add_argument("--detections", default=None,
                   help="OUT-OF-FOLD detections of the labelled images (submission CSV or a CSV "
                   "with image_id,class_id,score,x_min,y_min,x_max,y_max in original pixels): "
                   "adds detector-evidence features and tunes --low/--high; see below")
    p.add_argument("--detector-run", action="append", default=[], metavar="DIR",
                   help="detector run folder (its config.json names folds and fold) that produced "
                   "--detections; repeat once per fold run. Only used when --detections has no "
                   "provenance record beside it (weak check: some run must have held each image out)")
    p.add_argument("--classifier-probs", default=None, metavar="OOF.csv",
                   help="OUT-OF-FOLD image-level classifier probabilities (`cxrdet classify --folds F --fold K`, "
                   "+ merge-probabilities): adds the 'classifier' feature group; checked with the provenance "
                   "record beside it. A gate trained with it needs `cxrdet infer --classifier`")
    p.add_argument("--low", type=float, default=None, help=f"fix the low threshold (default: tuned, else {DEFAULT_LOW})")
    p.add_argument("--high", type=float, default=None, help=f"fix the high threshold (default: tuned, else {DEFAULT_HIGH})")
    p.add_argument("--n-estimators", type=int, default=2000, help="max boosting rounds per fold; early stopping ends sooner (default 2000)")
    p.add_argument("--lr", type=float, default=0.03, help="XGBoost learning rate, eta (default 0.03)")
    p.add_argument("--learning-rate", action=RenamedFlag, hint=lambda v: f"renamed to --lr {v} (as in `cxrdet train`)")
    p.add_argument("--max-depth", type=int, default=4, help="tree depth (default 4)")
    p.add_argument("--early-stopping", type=int, default=100, help="rounds without held-out log-loss gain before a fold stops (default 100)")
    p.add_argument("--workers", type=int, default=None, help="XGBoost threads (default: all cores)")
    p.add_argument("--no-ablation", action="store_true",
                   help="skip the metadata-only / +pixel comparison (saves one or two CV runs)")
    return p


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.n_folds < 2 and not args.folds:
        raise UserError(f"--n-folds must be at least 2 for cross-validation, got {args.n_folds}")
    meta = read_table(Path(args.meta), META_REQUIRED, "regenerate it with `cxrdet prepare --meta-out`")
    try:
        pixel = None if args.no_pixel else read_pixel_table(Path(args.meta), args.pixel_features)
    except UserError as e:
        raise UserError(f"{e} (--pixel-features PATH, or --no-pixel)") from None
    labels = read_training_labels(Path(args.labels))
    y_all = abnormal_targets(labels, args.abnormal_rule)
    meta = restrict_meta(meta, y_all, Path(args.meta), Path(args.labels))
    ids = meta["image_id"].tolist()
    y = y_all.reindex(ids).to_numpy(np.int64)
    folds = read_fold_column(Path(args.folds), ids) if args.folds else None
    dets = read_detections(Path(args.detections), ids) if args.detections else None
    try:
        oof_check = check_out_of_fold(args.detector_run, dets, Path(args.detections)) if dets else None
    except UserError as e:  # in-fold evidence: say which flags gave it
        raise UserError(f"{e} (flags: --detections, --detector-run; without --detections the gate uses "
                        "metadata and pixel features only)") from None

    clf, clf_check = read_classifier_evidence(Path(args.classifier_probs), ids) if args.classifier_probs else (None, None)
    X = build_features(meta, pixel, dets, clf)
    print(f"train-gate: {len(ids)} images ({int(y.sum())} abnormal), {X.shape[1]} features; "
          "cross-validating", file=sys.stderr)
    try:
        gate = make_gate(args).fit(X, y, folds)
    except UserError as e:  # too few images per fold, or a fold with one class: name the flags
        raise UserError(f"{e} (flags: --folds FOLDS.csv or --n-folds K)") from None
    ablation = run_ablation(args, X, y, gate)
    tuning = choose_thresholds(args, gate, dets, pd.Series(gate.oof_proba_, index=ids), labels)
    if dets is not None:
        add_gated_map(ablation, ids, dets, labels)
    rescoring = None
    if dets is not None and clf is not None:
        from cxrdet.gate.rescore import compare_rescoring

        p_oof = dict(zip(ids, map(float, gate.oof_proba_)))
        rescoring = compare_rescoring(dets, clf, p_oof, labels, gate.low_, gate.high_, seed=args.seed)
        gate.set_rescore(rescoring["choice"], rescoring["reason"])

    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "abnormal_rule": args.abnormal_rule,
        "feature_groups": sorted({feature_group(n) for n in X.columns}),
        "oof_auc_by_feature_set": {k: v["oof_auc"] for k, v in ablation.items()},
        "detector_oof_check": oof_check,
        "classifier_oof_check": clf_check,
    }
    gate.save(out, summary)
    report = build_report(args, gate, X, y, ablation, tuning, oof_check)
    report["classifier_oof_check"] = clf_check
    report["rescoring"] = rescoring
    write_report_json(out / "report.json", report)
    curves = {name: (y, r["oof_proba"]) for name, r in ablation.items()}
    plot_report(out / "feature_importance.png", gate.feature_importances(), curves, y,
                gate.oof_proba_, gate.low_, gate.high_)
    write_frame(out / "oof_predictions.csv", pd.DataFrame({"image_id": ids, "abnormal": y,
                                                           "p_abnormal_oof": gate.oof_proba_, "fold": gate.folds_}))
    print_summary(out, gate, ablation, report)
    if rescoring:
        g, r = rescoring["gated_none"], rescoring["gated_classifier"]
        print(f"  rescoring by the classifier, OOF gated mAP@0.4 on {rescoring['n_images']} images: "
              f"{g['map']:.4f} -> {r['map']:.4f} (without class 14 {g['map_no14']:.4f} -> {r['map_no14']:.4f}); "
              f"{rescoring['reason']}")
    return 0


# ------------------------------------------------------------------ training
def make_gate(args: argparse.Namespace) -> GateClassifier:
    return GateClassifier(
        n_estimators=args.n_estimators,
        learning_rate=args.lr,
        max_depth=args.max_depth,
        n_folds=args.n_folds,
        early_stopping_rounds=args.early_stopping,
        random_state=args.seed,
        n_jobs=args.workers,
    )


def ablation_sets(columns: list[str]) -> dict[str, list[str]]:
    """Nested feature sets, metadata first, each adding one group present in the table."""
    groups = [g for g in FEATURE_GROUPS if any(feature_group(c) == g for c in columns)]
    sets, acc = {}, []
    for g in groups:
        acc = acc + [g]
        sets["+".join(acc)] = [c for c in columns if feature_group(c) in acc]
    return sets


def run_ablation(args, X: pd.DataFrame, y: np.ndarray, gate: GateClassifier) -> dict:
    """OOF AUC per nested feature set, on the same folds; the full set is the trained gate."""
    results = {}
    sets = ablation_sets(list(X.columns))
    for name, cols in sets.items():
        if len(cols) == X.shape[1]:
            model = gate
        elif args.no_ablation:
            continue
        else:
            print(f"train-gate: ablation: cross-validating {name} ({len(cols)} features)", file=sys.stderr)
            model = make_gate(args).fit(X[cols], y, gate.folds_)
        results[name] = {"oof_auc": model.cv_auc_, "fold_auc": model.fold_auc_,
                         "n_features": len(cols), "oof_proba": model.oof_proba_}
    return results


def choose_thresholds(args, gate: GateClassifier, dets, p_oof: pd.Series, labels: pd.DataFrame) -> dict:
    """Defaults unless tuning on the OOF P(abnormal) earns its place (cxrdet.gate.selection)."""
    info: dict = {}
    low, high = DEFAULT_LOW, DEFAULT_HIGH
    source = "the standard defaults: no --detections given, so nothing to tune on"
    if dets is not None:
        from cxrdet.gate.selection import select_thresholds

        p = {str(i): float(v) for i, v in p_oof.items()}
        full = {i: dets.get(i, Detections.empty()) for i in p}
        info["selection"] = select_thresholds(full, p, labels, seed=args.seed)
        low, high = info["selection"]["low"], info["selection"]["high"]
        if info["selection"]["decision"] == "tuned":
            source = f"tuned on out-of-fold P(abnormal) with --detections: {info['selection']['reason']}"
        else:
            source = f"the standard defaults, kept: {info['selection']['reason']}"
    if args.low is not None or args.high is not None:
        low = args.low if args.low is not None else low
        high = args.high if args.high is not None else high
        source = "set on the command line (--low/--high)"
    gate.set_thresholds(low, high, source)
    if dets is not None:
        info.update(gated_vs_ungated(full, p, labels, low, high))
    return info


def add_gated_map(ablation: dict, ids: list[str], dets: dict[str, Detections], labels) -> None:
    """Best gated mAP@0.4 per feature set (each tuned on its own OOF p): what each group adds.

    In-sample (the pair is picked on the images it is scored on), so optimistic: it compares
    feature sets with each other, it is not the gate's expected mAP.
    """
    from cxrdet.gate.rules import DEFAULT_HIGHS, DEFAULT_LOWS, tune_thresholds

    full = {i: dets.get(i, Detections.empty()) for i in ids}
    for r in ablation.values():
        p = dict(zip(ids, map(float, r["oof_proba"])))
        low, high, table = tune_thresholds(full, p, labels, DEFAULT_LOWS, DEFAULT_HIGHS)
        r["gated_map_tuned"] = {"low": low, "high": high, "map": float(table["map"].iat[0]),
                                "map_no14": float(table["map_no14"].iat[0])}


def gated_vs_ungated(dets: dict[str, Detections], p: dict[str, float], labels, low, high) -> dict:
    """mAP@0.4 of the detections as they are and after the gate, on the same images."""
    from cxrdet.gate.rules import apply_gate
    from cxrdet.detections import detections_to_frame
    from cxrdet.metrics import evaluate_detections

    gated = {i: apply_gate(d, p[i], low, high) for i, d in dets.items()}
    out = {}
    for name, preds in (("ungated", dets), ("gated", gated)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = evaluate_detections(labels, detections_to_frame(preds), pred_image_ids=list(preds))
        out[f"map_{name}"] = float(result.map)
        out[f"map_no14_{name}"] = float(result.map_no14)
    return out


def _records(table) -> list[dict]:
    if isinstance(table, pd.DataFrame):
        return table.to_dict("records")
    return list(table)


# ------------------------------------------------------------------ report
def build_report(args, gate: GateClassifier, X, y, ablation, tuning, oof_check) -> dict:
    folds = args.folds or f"stratified {gate.n_folds}-fold (seed {args.seed})"
    return {
        "inputs": {"meta": args.meta, "pixel_features": None if args.no_pixel else (args.pixel_features or "default"),
                   "labels": args.labels, "folds": args.folds, "detections": args.detections,
                   "detector_runs": args.detector_run, "classifier_probs": args.classifier_probs},
        "n_images": int(len(y)),
        "n_abnormal": int(y.sum()),
        "n_normal": int(len(y) - y.sum()),
        "abnormal_rule": args.abnormal_rule,
        "n_features": {g: int(sum(feature_group(c) == g for c in X.columns)) for g in FEATURE_GROUPS},
        "cv": {
            "folds": folds,
            "fold_auc": gate.fold_auc_,
            "oof_auc": gate.cv_auc_,
            "best_iterations": gate.best_iterations_,
            "n_rounds_final": gate.n_rounds_,
            "note": "early stopping watches each held-out fold, so OOF AUC is slightly optimistic; "
                    "the final booster is trained on all images for the mean best round count",
        },
        "thresholds": {"low": gate.low_, "high": gate.high_, "source": gate.threshold_source_},
        "confusion_oof": zone_confusion(y, gate.oof_proba_, gate.low_, gate.high_),
        "ablation_oof_auc": {k: {kk: vv for kk, vv in v.items() if kk != "oof_proba"} for k, v in ablation.items()},
        "threshold_tuning": tuning or None,
        "detector_oof_check": oof_check,
        "feature_importance_total_gain": gate.feature_importances().to_dict(),
        "versions": library_versions(),
    }


def print_summary(out: Path, gate: GateClassifier, ablation: dict, report: dict) -> None:
    folds = ", ".join(f"{a:.3f}" for a in gate.fold_auc_)
    print(f"gate: {gate.n_train_} images ({gate.n_abnormal_} abnormal), OOF ROC AUC {gate.cv_auc_:.4f} "
          f"(folds: {folds}), {gate.n_rounds_} rounds")
    for name, r in ablation.items():
        tuned = r.get("gated_map_tuned")
        gated = f", gated mAP@0.4 {tuned['map']:.4f} at {tuned['low']:g}/{tuned['high']:g}" if tuned else ""
        print(f"  OOF AUC {name:<28} {r['oof_auc']:.4f}  ({r['n_features']} features{gated})")
    c = report["confusion_oof"]
    print(f"  thresholds low={gate.low_:g} high={gate.high_:g} ({gate.threshold_source_})")
    print(f"  OOF zones normal: {c['counts']['normal']}  abnormal: {c['counts']['abnormal']}")
    tuning = report.get("threshold_tuning") or {}
    sel = tuning.get("selection")
    if sel:
        print(f"  threshold selection: {sel['decision']} ({sel['n_images']} OOF images, {sel['n_abnormal']} abnormal; "
              f"minimum {sel['min_images']} / {sel['min_abnormal']})")
        if "gain" in sel:
            g, t = sel["gain"], sel["tuned"]
            print(f"    tuned {t['low']:g}/{t['high']:g} on {sel['n_select']} images, tested on {sel['n_test']}: "
                  f"mAP@0.4 {g['map_defaults']:.4f} (defaults) -> {g['map_tuned']:.4f}, gain {g['map']:+.4f} "
                  f"[95% {g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}]")
    if "map_gated" in tuning:
        print(f"  mAP@0.4 ungated {tuning['map_ungated']:.4f} -> gated {tuning['map_gated']:.4f}")
    print(f"wrote {out / 'gate.ubj'}, {out / 'gate_schema.json'}, {out / 'report.json'}, "
          f"{out / 'feature_importance.png'}")
