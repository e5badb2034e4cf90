"""The 2-class filter's rules (low/high thresholds: see cxrdet/gate/rules.py) and the grid search for its thresholds.

With p = P(abnormal) and thresholds ``low < high``:

* ``p < low``: the image's prediction is ``14 1 0 0 1 1`` only;
* ``low <= p < high``: the detector's findings plus ``14 (1-p) 0 0 1 1``;
* ``p >= high``: the findings only.

Any class-14 detections the detector itself produced are replaced by the gate's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cxrdet.classes import NO_FINDING
from cxrdet.detections import Detections, detections_to_frame, normal_detection
from cxrdet.metrics import IOU_THR, GroundTruth, match_detections, summarize

# the standard 2-class filter thresholds (they worked on the VinBigData public leaderboard):
# below DEFAULT_LOW an image is called normal only, from DEFAULT_HIGH on it gets boxes only
DEFAULT_LOW, DEFAULT_HIGH = 0.08, 0.95
DEFAULT_LOWS = (0.0, 0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3)
DEFAULT_HIGHS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0, 1.01)  # 1.01: never drop the class-14 row


def _check(p_abnormal: float, low: float, high: float) -> None:
    if not low < high:
        raise ValueError(f"gate thresholds need low < high, got low={low}, high={high}")
    if not (math.isfinite(p_abnormal) and 0.0 <= p_abnormal <= 1.0):
        raise ValueError(f"p_abnormal must be a probability in [0, 1], got {p_abnormal}")


def apply_gate(dets: Detections, p_abnormal: float, low: float = DEFAULT_LOW,
               high: float = DEFAULT_HIGH) -> Detections:
    """One image's final prediction from its findings and P(abnormal) (module docstring)."""
    _check(p_abnormal, low, high)
    findings = dets.select(dets.class_ids != NO_FINDING)
    if p_abnormal < low:
        return normal_detection(1.0)
    if p_abnormal < high:
        return Detections.concat([findings, normal_detection(1.0 - p_abnormal)])
    return findings


def tune_thresholds(detections: Mapping[str, Detections], p_abnormal: Mapping[str, float],
                    gt_labels: pd.DataFrame, lows: Sequence[float] = DEFAULT_LOWS,
                    highs: Sequence[float] = DEFAULT_HIGHS,
                    iou_thr: float = IOU_THR) -> tuple[float, float, pd.DataFrame]:
    """Grid search of ``(low, high)`` with low < high maximizing mAP@iou_thr on validation data.

    ``detections``: the detector's findings per image (original pixels); every image of
    ``gt_labels`` needs a ``p_abnormal``. Returns ``(low, high, table)``; the table has one row
    per tried pair (``low, high, map, map_no14, ap_14``) sorted best first; among equal mAPs the
    earliest pair in grid order wins.

    Matching is per image, so the gate only removes or keeps whole images' findings: the
    findings are matched once and each pair just re-ranks, which gives exactly the mAP that
    :func:`cxrdet.metrics.evaluate_detections` computes on :func:`apply_gate` outputs.
    """
    gt = GroundTruth.from_labels(gt_labels)
    ids = list(gt.image_ids)
    lacking = [k for k in ids if k not in p_abnormal]
    if lacking:
        raise ValueError(f"p_abnormal is missing for {len(lacking)} image(s), e.g. {lacking[:5]}")
    p = np.array([float(p_abnormal[k]) for k in ids])
    if not (np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()):
        raise ValueError("p_abnormal values must be probabilities in [0, 1]")
    # Findings in the order evaluate_detections would see them (gated dict = detections' order).
    order = [k for k in detections if k in gt.image_ids] + [k for k in ids if k not in detections]
    frame = detections_to_frame({k: detections.get(k, Detections.empty()) for k in order})
    frame = frame[frame["class_id"] != NO_FINDING]
    img = gt.image_ids.get_indexer(frame["image_id"])
    cls = frame["class_id"].to_numpy(np.int64)
    score = frame["score"].to_numpy(np.float64)
    tp = match_detections(gt, img, cls, score, frame[["x_min", "y_min", "x_max", "y_max"]].to_numpy(),
                          iou_thr)
    order_img = gt.image_ids.get_indexer(order)
    normal_img = np.zeros(len(ids), bool)
    normal_img[gt.img[gt.cls == NO_FINDING]] = True
    rows = []
    for low, high in itertools.product(lows, highs):
        if not low < high:
            continue
        rows.append(_score_pair(low, high, p, order_img, normal_img, img, cls, score, tp, gt, iou_thr))
    if not rows:
        raise ValueError("no (low, high) pair with low < high in the grid")
    table = pd.DataFrame(rows).sort_values("map", ascending=False, kind="stable").reset_index(drop=True)
    return float(table["low"].iat[0]), float(table["high"].iat[0]), table


def _score_pair(low, high, p, order_img, normal_img, img, cls, score, tp, gt, iou_thr) -> dict:
    keep = p[img] >= low
    p_o = p[order_img]
    has14 = p_o < high
    s14 = np.where(p_o < low, 1.0, 1.0 - p_o)[has14]
    tp14 = normal_img[order_img][has14]  # [0,0,1,1] vs the normal box: IoU 1 on normal images
    # Per image the gate puts findings first and class 14 last; classes are scored separately,
    # so concatenating all findings then all class-14 rows ranks exactly as per-image order.
    res = summarize(np.concatenate([tp[keep], tp14]),
                    np.concatenate([cls[keep], np.full(len(s14), NO_FINDING)]),
                    np.concatenate([score[keep], s14]), gt.cls, len(gt.image_ids), iou_thr)
    return {"low": low, "high": high, "map": res.map, "map_no14": res.map_no14,
            "ap_14": res.per_class[NO_FINDING]}
