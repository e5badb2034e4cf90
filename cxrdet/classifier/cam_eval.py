"""How well Grad-CAM heatmaps localise, against VinBigData box labels (``evaluate-classifier --cam``).

Two measures, over the images of the heatmap file that have labels:

- the pointing game per class and overall: for every (image, class) with a heatmap and at
  least one ground-truth box of that class (any reader), a hit when the heatmap's peak lies in
  one of those boxes; next to the chance level, the mean share of the image those boxes cover;
- heatmap boxes (:func:`cxrdet.classifier.heatmap_boxes.heatmap_boxes`, scored by the class
  probability, mapped to original pixels) scored with the competition's mAP@0.4 (the metric of
  ``cxrdet evaluate``, on the labels as given), so the weakly supervised localiser and the
  detector are on one scale. The heatmaps explain findings only, so the figure to compare with
  a detector is ``map_no14`` (class 14 "No finding" has no heatmap and scores 0 here).

Only classifier classes named like a VinBigData finding (``Aortic enlargement`` ...) are scored.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd

from cxrdet.boxes import scale_boxes
from cxrdet.classes import CLASS_NAMES, NO_FINDING
from cxrdet.classifier.heatmap_boxes import covered_share, heatmap_boxes, pointing_hit
from cxrdet.detections import DET_COLUMNS, det_frame
from cxrdet.errors import UserError
from cxrdet.formats.heatmaps import read_heatmaps
from cxrdet.formats.labels import read_labels
from cxrdet.metrics import MetricWarning, evaluate_detections


def _gt_boxes(labels: pd.DataFrame) -> dict[tuple[str, int], np.ndarray]:
    boxed = labels[labels["class_id"] != NO_FINDING]
    return {(str(i), int(c)): g[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float64)
            for (i, c), g in boxed.groupby(["image_id", "class_id"], sort=False)}


def _finding_ids(class_names: list[str]) -> dict[int, int]:
    """Heatmap class index -> VinBigData finding id, for the classes named like a finding."""
    return {k: CLASS_NAMES.index(n) for k, n in enumerate(class_names) if n in CLASS_NAMES[:NO_FINDING]}


def _tally(per_class: dict, cid: int, hit: bool, chance: float) -> None:
    entry = per_class.setdefault(cid, {"hits": 0, "pairs": 0, "chance_sum": 0.0})
    entry["hits"] += int(hit)
    entry["pairs"] += 1
    entry["chance_sum"] += chance


def _pointing_summary(per_class: dict) -> dict:
    out = {}
    for cid in sorted(per_class):
        e = per_class[cid]
        out[CLASS_NAMES[cid]] = {"pairs": e["pairs"], "hit_rate": e["hits"] / e["pairs"],
                                 "chance": e["chance_sum"] / e["pairs"]}
    pairs = sum(e["pairs"] for e in per_class.values())
    overall = {"pairs": pairs, "hit_rate": sum(e["hits"] for e in per_class.values()) / pairs if pairs else None,
               "chance": sum(e["chance_sum"] for e in per_class.values()) / pairs if pairs else None}
    return {"per_class": out, "overall": overall}


def cam_report(labels_path: str | os.PathLike, heatmaps_path: str | os.PathLike,
               threshold: float, min_area: int) -> tuple[dict, pd.DataFrame]:
    """(report, heatmap-box detections in original pixels) of a heatmap file against box labels."""
    labels = read_labels(labels_path)
    class_names, records = read_heatmaps(heatmaps_path)
    findings = _finding_ids(class_names)
    if not findings:
        raise UserError(f"{heatmaps_path}: none of its classes {class_names} is a VinBigData finding; the heatmap "
                        "evaluation needs a classifier trained on VinBigData labels")
    gt, labelled = _gt_boxes(labels), set(labels["image_id"])
    per_class: dict = {}
    rows: list[tuple] = []
    seen: list[str] = []
    for rec in records:
        if rec.image_id not in labelled:
            continue
        seen.append(rec.image_id)
        heat_hw = rec.heatmaps.shape[1:]
        for k, c in enumerate(rec.class_ids):
            if c not in findings:
                continue
            cid = findings[c]
            truth = gt.get((rec.image_id, cid))
            if truth is not None:
                in_heat = scale_boxes(truth, rec.orig_hw, heat_hw)
                _tally(per_class, cid, pointing_hit(rec.heatmaps[k], in_heat), covered_share(in_heat, heat_hw))
            for box in scale_boxes(heatmap_boxes(rec.heatmaps[k], threshold, min_area), heat_hw, rec.orig_hw):
                rows.append((rec.image_id, cid, rec.probability[k], box))
    if not seen:
        raise UserError(f"no image of {heatmaps_path} is in the labels {labels_path}; pass the labels of those images")
    dets = det_frame([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                     [r[3] for r in rows]) if rows else pd.DataFrame(columns=DET_COLUMNS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # images without heatmap boxes count as none: intended
        result = evaluate_detections(labels[labels["image_id"].isin(seen)], dets, pred_image_ids=seen)
    report = {"pointing_game": _pointing_summary(per_class), "images": len(seen), "heatmap_boxes": len(dets),
              "threshold": threshold, "min_area": min_area,
              "heatmap_box_map": {"map": result.map, "map_no14": result.map_no14,
                                  "per_class": {CLASS_NAMES[c]: v for c, v in result.per_class.items()}}}
    return report, dets
