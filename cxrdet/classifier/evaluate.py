"""``cxrdet evaluate-classifier``: score a probability CSV (``cxrdet classify``) against labels.

The label source is recognised as in ``train-classifier`` (VinBigData train.csv, NIH-style
CSV, folder per class); images are those in both files. Multi-label: per-class AUROC with a
bootstrap 95% interval, macro AUROC, ROC curves and a reliability diagram with the expected
calibration error (soft labels count as positive from 0.5). Multi-class: accuracy, per-class
precision / recall / F1 and a confusion matrix. Writes ``--out/metrics.json`` and PNGs under
``--out/plots/``, prints a table (:mod:`cxrdet.classifier.scores` for the definitions).

``--cam HEATMAPS.h5`` (``classify --cam-raw``) adds how well the heatmaps localise against the
VinBigData boxes of ``--labels``: the pointing game per class with its chance level, and the
heatmap-derived boxes scored with mAP@0.4 (:mod:`cxrdet.classifier.cam_eval`), in
``metrics.json`` under ``cam``, the boxes as ``cam_boxes.csv`` and ``plots/pointing_game.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cxrdet.classifier.heatmap_boxes import DEFAULT_MIN_AREA, DEFAULT_THRESHOLD
from cxrdet.errors import UserError
from cxrdet.flags import DEFAULT_SEED
from cxrdet.formats import atomic

SHOWN = 5


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Score class probabilities (`cxrdet classify --out`) against labels "
                                            "with scikit-learn: AUROC + bootstrap CI, calibration / accuracy, "
                                            "per-class P/R/F1, confusion matrix. JSON, PNGs and a printed table.")
    p.add_argument("--labels", required=True, help="VinBigData train.csv, NIH-style CSV or a folder per class")
    p.add_argument("--probs", help="probability CSV from `cxrdet classify` (needed unless --cam is given)")
    p.add_argument("--cam", metavar="HEATMAPS_H5", help="raw heatmaps (`classify --cam-dir DIR --cam-raw`: "
                   "DIR/heatmaps.h5): pointing game + heatmap-box mAP@0.4 against the boxes of --labels")
    p.add_argument("--cam-threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="heatmap boxes: components above this share of the heatmap's maximum (default: %(default)s)")
    p.add_argument("--cam-min-area", type=int, default=DEFAULT_MIN_AREA,
                   help="heatmap boxes: smallest component kept, in heatmap pixels (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for metrics.json and plots/")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples of the images for the 95%% AUROC intervals (0 = none; default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the bootstrap (default: %(default)s)")
    return p


def aligned(labels, probs, sources: tuple[str, str] = ("the labels", "the probabilities")
            ) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(class names, truth, probabilities, notes) on the images and classes both files have.

    ``sources`` names the two inputs in messages (the files, when the command knows them)."""
    notes = []
    where_labels, where_probs = sources
    common = sorted(set(labels.image_ids) & set(probs.image_ids))
    if not common:
        raise UserError(f"no image id is in both {where_labels} and {where_probs} (e.g. labels "
                        f"{labels.image_ids[:3]}, probabilities {probs.image_ids[:3]}); pass the probabilities "
                        "of these labelled images")
    unlabelled = sorted(set(probs.image_ids) - set(labels.image_ids))
    if unlabelled:
        notes.append(f"{len(unlabelled)} predicted image(s) have no label and are not scored, e.g. {unlabelled[:SHOWN]}")
    unpredicted = sorted(set(labels.image_ids) - set(probs.image_ids))
    if unpredicted:
        notes.append(f"{len(unpredicted)} labelled image(s) have no probabilities and are not scored, "
                     f"e.g. {unpredicted[:SHOWN]}")
    names = [n for n in probs.class_names if n in labels.class_names]
    if labels.task == "multiclass" and sorted(names) != sorted(labels.class_names):
        raise UserError(f"the classes {probs.class_names} of {where_probs} are not the classes {labels.class_names} "
                        f"of {where_labels}; score a classifier trained on these classes")
    if not names:
        raise UserError(f"no class {probs.class_names} of {where_probs} is among the classes {labels.class_names} "
                        f"of {where_labels}")
    skipped = [n for n in probs.class_names if n not in names]
    if skipped:
        notes.append(f"class(es) without labels, not scored: {', '.join(skipped)}")
    sub = labels.subset(common)
    p_index = {k: i for i, k in enumerate(probs.image_ids)}
    rows = [p_index[k] for k in common]
    p = probs.values[rows][:, [probs.class_names.index(n) for n in names]]
    truth = sub.positives()[:, [labels.class_names.index(n) for n in names]]
    return names, truth, p, notes


def print_table(report: dict) -> None:
    if report["task"] == "multiclass":
        print(f"{'class':<28} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>8}")
        for name, e in report["per_class"].items():
            print(f"{name[:28]:<28} {e['precision']:>9.3f} {e['recall']:>7.3f} {e['f1']:>6.3f} {e['support']:>8d}")
        print(f"accuracy {report['accuracy']:.4f} on {report['images']} images, macro F1 {report['macro_f1']:.4f}")
        return
    print(f"{'class':<28} {'pos':>6} {'AUROC':>7} {'95% CI':>15} {'ECE':>6}")
    for name, e in report["per_class"].items():
        lo, hi = e["auroc_ci95"]
        ci = f"{lo:.3f}-{hi:.3f}" if lo is not None else "-"
        auroc = f"{e['auroc']:.4f}" if np.isfinite(e["auroc"]) else "-"
        print(f"{name[:28]:<28} {e['positives']:>6d} {auroc:>7} {ci:>15} {e['ece']:>6.3f}")
    lo, hi = report["macro_auroc_ci95"]
    ci = f" (95% CI {lo:.4f}-{hi:.4f})" if lo is not None else ""
    print(f"macro AUROC {report['macro_auroc']:.4f}{ci} over {len(report['classes_scored'])} classes, "
          f"{report['images']} images; pooled ECE {report['ece_pooled']:.4f}")


def print_cam(report: dict) -> None:
    pg = report["pointing_game"]
    print(f"{'class (Grad-CAM)':<28} {'pairs':>6} {'hit rate':>9} {'chance':>7} {'box AP':>7}")
    for name, e in pg["per_class"].items():
        ap = report["heatmap_box_map"]["per_class"].get(name)
        ap_text = f"{ap:.4f}" if ap is not None and np.isfinite(ap) else "-"
        print(f"{name[:28]:<28} {e['pairs']:>6d} {e['hit_rate']:>9.3f} {e['chance']:>7.3f} {ap_text:>7}")
    o, m = pg["overall"], report["heatmap_box_map"]
    if o["pairs"]:
        print(f"pointing game {o['hit_rate']:.3f} (chance {o['chance']:.3f}) over {o['pairs']} image-class pairs")
    print(f"heatmap boxes: mAP@0.4 {m['map']:.4f}, without class 14 {m['map_no14']:.4f} "
          f"({report['heatmap_boxes']} boxes on {report['images']} images)")


def evaluate_cam(args: argparse.Namespace, out: Path) -> dict:
    """The ``--cam`` part: report, cam_boxes.csv and the pointing-game picture."""
    from cxrdet.classifier import plots
    from cxrdet.classifier.cam_eval import cam_report

    if not 0 < args.cam_threshold <= 1 or args.cam_min_area < 1:
        raise UserError(f"--cam-threshold must be in (0, 1] and --cam-min-area >= 1, got {args.cam_threshold} "
                        f"and {args.cam_min_area}")
    report, boxes = cam_report(args.labels, args.cam, args.cam_threshold, args.cam_min_area)
    atomic.write_frame(out / "cam_boxes.csv", boxes)
    if report["pointing_game"]["overall"]["pairs"]:
        plots.plot_pointing_game(report["pointing_game"], out / "plots/pointing_game.png")
    report["heatmaps"] = str(args.cam)
    print_cam(report)
    return report


def main(args: argparse.Namespace) -> int:
    from cxrdet.classifier import plots, scores
    from cxrdet.classifier.labels import read_label_source
    from cxrdet.formats.probabilities import read_probabilities

    if args.bootstrap < 0:
        raise UserError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.probs is None and args.cam is None:
        raise UserError("pass --probs (class probabilities to score), --cam (heatmaps to score) or both")
    out = Path(args.out)
    if args.probs is None:
        report = {"labels": str(args.labels), "cam": evaluate_cam(args, out)}
        atomic.write_json(out / "metrics.json", report)
        print(f"report {out / 'metrics.json'}")
        return 0
    labels = read_label_source(args.labels)
    names, truth, probs, notes = aligned(labels, read_probabilities(args.probs),
                                         (f"labels {args.labels}", f"probabilities {args.probs}"))
    for note in notes:
        print(f"evaluate-classifier: {note}", file=sys.stderr)
    if labels.task == "multiclass":
        report = scores.multiclass_report(names, truth.argmax(axis=1), probs)
        pictures = [plots.plot_confusion(names, np.asarray(report["confusion_matrix"]), out / "plots/confusion_matrix.png")]
    else:
        report = scores.multilabel_report(names, truth, probs, args.bootstrap, args.seed)
        pictures = [plots.plot_roc_curves(names, truth, probs, report, out / "plots/roc_curves.png"),
                    plots.plot_reliability(report, out / "plots/reliability.png")]
    report.update({"labels": str(args.labels), "probs": str(args.probs), "label_source": labels.source, "notes": notes})
    print_table(report)
    if args.cam is not None:
        report["cam"] = evaluate_cam(args, out)
    atomic.write_json(out / "metrics.json", report)
    print(f"report {out / 'metrics.json'}; plots {', '.join(str(p) for p in pictures)}")
    return 0
