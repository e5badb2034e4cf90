"""``cxrdet evaluate``: score a submission CSV with the competition's mAP@0.4.

Prints a per-class table (class, ground-truth boxes, detections, AP and, with
``--image-level``, the image-level ROC AUC), writes the JSON report with ``--json`` and the
PR curves + AP bar chart with ``--plot-dir``. Light on purpose: no torch import; sklearn,
matplotlib and ensemble-boxes load only when their option is used.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.classes import CLASS_NAMES, NO_FINDING, NUM_CLASSES, NUM_FINDINGS
from cxrdet.errors import UserError
from cxrdet.formats.atomic import json_ready, write_json
from cxrdet.formats.labels import image_level_labels, image_sizes_from_meta, read_labels
from cxrdet.metrics import IOU_THR, MATCH_MODES, MetricResult, MetricWarning, evaluate_detections
from cxrdet.formats.submission import read_submission
from cxrdet.fusion import FUSION_METHODS  # ensemble_boxes (numba) is imported only when fusing



def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Score a submission CSV with the competition's mAP@0.4 (PASCAL VOC 2010 "
                    "all-point AP, IoU > 0.4, 15 classes with 'No finding' as box 0 0 1 1).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--gt", required=True, help="ground-truth label CSV (VinBigData train.csv format)")
    p.add_argument("--pred", required=True, help="submission CSV: image_id,PredictionString")
    p.add_argument("--json", help="write the report as JSON here")
    p.add_argument("--plot-dir", help="write PR curves (grid + one per class) and an AP bar chart here")
    p.add_argument("--image-level", help="CSV image_id,p_abnormal,p_0..p_13 (cxrdet infer "
                   "--image-level-out): adds image-level ROC AUC per class and abnormal-vs-normal")
    p.add_argument("--fuse-gt", choices=FUSION_METHODS,
                   help="fuse the readers' ground-truth boxes first; without it ground truth is used as given")
    p.add_argument("--fuse-iou", type=float, default=0.5, help="IoU of --fuse-gt clustering")
    p.add_argument("--min-readers", type=int, default=2, help="readers a box needs under --fuse-gt consensus")
    p.add_argument("--meta", help="META.csv (image_id,rows,columns): check ground-truth boxes lie inside")
    p.add_argument("--iou-thr", type=float, default=IOU_THR, help="a match needs IoU strictly above this")
    p.add_argument("--match", choices=MATCH_MODES, default="unmatched",
                   help="'unmatched': each detection takes its best still-unmatched box; 'voc': VOC devkit/map-boxes rule")
    return p


def load_ground_truth(args: argparse.Namespace) -> pd.DataFrame:
    sizes = image_sizes_from_meta(args.meta) if args.meta else None
    gt = read_labels(args.gt, image_sizes=sizes)
    if args.fuse_gt:
        from cxrdet.fusion import fuse_readers

        try:
            gt = fuse_readers(gt, args.fuse_gt, iou_thr=args.fuse_iou, min_readers=args.min_readers,
                              image_sizes=sizes)
        except ValueError as e:
            raise UserError(f"--fuse-gt: {e}") from None
    return gt


def image_auc(gt: pd.DataFrame, path: str, messages: list[str]) -> dict:
    """Image-level ROC AUC per finding (p_k vs 'any reader marked class k') and abnormal vs normal."""
    from sklearn.metrics import roc_auc_score

    from cxrdet.formats.image_level import read_image_level

    probs = read_image_level(path).set_index("image_id")
    y = image_level_labels(gt)
    missing = y.index.difference(probs.index)
    if len(missing):
        messages.append(f"{len(missing)} ground-truth image(s) are absent from {path} and left out of "
                        f"the AUC, e.g. {list(missing[:5])}")
    extra = probs.index.difference(y.index)
    if len(extra):
        messages.append(f"{len(extra)} image(s) of {path} are not in the ground truth and were "
                        f"ignored, e.g. {list(extra[:5])}")
    ids = y.index.intersection(probs.index, sort=False)
    y, probs = y.loc[ids], probs.loc[ids]

    def auc(truth: np.ndarray, score: np.ndarray) -> float:
        ok = np.isfinite(score)
        truth, score = truth[ok], score[ok]
        return float(roc_auc_score(truth, score)) if len(np.unique(truth)) == 2 else math.nan

    per_class = {c: auc(y[c].to_numpy(), probs[f"p_{c}"].to_numpy()) for c in range(NUM_FINDINGS)}
    abnormal = auc(1 - y[NO_FINDING].to_numpy(), probs["p_abnormal"].to_numpy())
    return {"per_class": per_class, "abnormal": abnormal, "n_images": int(len(ids))}


def _fmt(x: float, width: int = 7) -> str:
    return f"{'-':>{width}}" if x is None or math.isnan(x) else f"{x:{width}.4f}"


def _classes(n: int) -> str:
    return f"{n} class" if n == 1 else f"{n} classes"


def format_table(result: MetricResult, auc: dict | None = None) -> str:
    """The terminal table: one row per class, then the means."""
    head = f"{'id':>2}  {'class':<20} {'n_gt':>6} {'n_det':>7} {'AP':>7}" + (f" {'AUC':>7}" if auc else "")
    lines = [head, "-" * len(head)]
    for c in range(NUM_CLASSES):
        row = (f"{c:>2}  {CLASS_NAMES[c]:<20} {result.n_gt[c]:>6} {result.n_det[c]:>7} "
               f"{_fmt(result.per_class[c])}")
        if auc:
            row += " " + _fmt(auc["per_class"].get(c, math.nan) if c < NO_FINDING else auc["abnormal"])
        lines.append(row)
    lines.append("-" * len(head))
    # the means cover only classes with ground truth: say how many there were
    n_all = sum(result.n_gt[c] > 0 for c in range(NUM_CLASSES))
    n_find = sum(result.n_gt[c] > 0 for c in range(NO_FINDING))
    lines.append(f"{f'mAP@{result.iou_thr:g} ({_classes(n_all)} with ground truth)':<40} {_fmt(result.map, 10)}")
    lines.append(f"{f'mAP@{result.iou_thr:g} without class 14 ({_classes(n_find)})':<40} "
                 f"{_fmt(result.map_no14, 10)}")
    if auc:
        lines.append(f"{'image-level AUC, abnormal vs normal':<40} {_fmt(auc['abnormal'], 10)}"
                     f"   (row 14: p_abnormal; {auc['n_images']} images)")
    lines.append(f"{result.n_images} ground-truth images")
    return "\n".join(lines)


def report_json(result: MetricResult, args: argparse.Namespace, auc: dict | None) -> dict:
    out = result.to_json()
    out.update({"gt": str(args.gt), "pred": str(args.pred), "fuse_gt": args.fuse_gt})
    if auc is not None:
        out["image_auc"] = {
            "per_class": {str(c): v for c, v in auc["per_class"].items()},
            "abnormal": auc["abnormal"],
            "n_images": auc["n_images"],
        }
    return json_ready(out)  # NaN (an undefined AUC or AP) -> null, as the file holds it


def main(args: argparse.Namespace) -> int:
    if not 0.0 <= args.iou_thr < 1.0:
        raise UserError(f"--iou-thr must be in [0, 1), got {args.iou_thr}")
    gt = load_ground_truth(args)
    det, pred_ids = read_submission(args.pred, with_ids=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # shown below from result.warnings
        result = evaluate_detections(gt, det, args.iou_thr, match=args.match, pred_image_ids=pred_ids)
    messages = list(result.warnings)
    auc = image_auc(gt, args.image_level, messages) if args.image_level else None
    for m in messages:
        print(f"warning: {m}", file=sys.stderr)
    result.warnings = messages
    print(format_table(result, auc))
    if args.json:
        write_json(args.json, report_json(result, args, auc))
        print(f"wrote {args.json}")
    if args.plot_dir:
        from cxrdet.plots import plot_ap_bars, plot_pr_curves

        paths = plot_pr_curves(result, args.plot_dir)
        paths.append(plot_ap_bars(result, Path(args.plot_dir) / "ap_per_class.png"))
        print(f"wrote {len(paths)} plots to {args.plot_dir} (pr_curves.png, ap_per_class.png, pr_XX_*.png)")
    return 0
