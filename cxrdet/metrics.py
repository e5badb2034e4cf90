"""The competition metric: PASCAL VOC 2010 all-point AP at IoU > 0.4, 15 classes.

Definition, per class:

* Ground truth is used as given (one box per label row; fusing readers is the caller's explicit
  choice, see :mod:`cxrdet.fusion`). Class 14 ("No finding") gets ONE ground-truth box
  ``[0, 0, 1, 1]`` per image that has a class-14 row (three readers saying "No finding" is one
  normal image, not three boxes). This holds on a *mixed* image too, where one reader wrote
  "No finding" and another marked a finding: it gets both the finding's box and the class-14
  box, so a class-14 prediction there is a true positive and its absence a missed box. That is
  "ground truth is used as given"; resolving such images is a choice made before
  the metric (:func:`cxrdet.fusion.fuse_readers`, ``cxrdet evaluate --fuse-gt``: a fused image
  keeps class 14 only when no finding box survives), never inside it.
* Detections of all images are sorted by confidence, descending; ties keep their input order
  (a stable sort, as the VOC devkit's MATLAB ``sort``).
* ``match="unmatched"`` (the default): each detection is matched to the *still
  unmatched* ground-truth box of its image with the highest IoU; a match needs IoU > iou_thr
  (strictly: IoU exactly 0.4 is not a match). Once all boxes it overlaps are taken, a
  detection is a false positive (a duplicate).
* ``match="voc"`` (the VOC devkit and map-boxes): each detection takes the box with the highest
  IoU among ALL ground-truth boxes of its image; if that box is already matched the detection
  is a false positive even when another unmatched box overlaps it by more than iou_thr. The two
  rules differ only when boxes of one class and image overlap each other (e.g. unfused
  readers' boxes); ``benchmarks/bench_metric.py`` shows the size of the difference.
* AP = area under the monotone precision envelope over all recall points (VOC 2010+).

mAP is the mean over classes with at least one ground-truth box; ``map_no14`` the same over
classes 0..13. Classes without ground truth have AP NaN (``null`` in JSON). Predictions for
images absent from the ground truth are ignored and ground-truth images without a prediction
row count as having no detections; both give a :class:`MetricWarning` and are listed in
``MetricResult.warnings``.

Implementation: one stable sort, vectorized IoU of the (detection, ground truth) pairs of the
same image and class, closed-form matching where an image holds one box of the class (class
14 always, findings mostly), and a short loop only over detections that overlap one of several
boxes. 3,000 images with 50,000 detections score in about 0.1 s (benchmarks/bench_metric.py).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxrdet.classes import CLASS_NAMES, NO_FINDING, NORMAL_BOX, NUM_CLASSES
from cxrdet.detections import DET_COLUMNS, Detections, detections_to_frame  # noqa: F401 (scored frames)
from cxrdet.formats.atomic import json_ready

IOU_THR = 0.4  # the competition's threshold; a match needs IoU strictly above it
MATCH_MODES = ("unmatched", "voc")


class MetricWarning(UserWarning):
    """Inputs the metric ignored or treated as empty (listed, never silent)."""


@dataclass
class MetricResult:
    """mAP@iou_thr and its parts. ``precision``/``recall`` arrays follow descending confidence."""

    map: float
    map_no14: float
    per_class: dict[int, float]
    precision: dict[int, np.ndarray]
    recall: dict[int, np.ndarray]
    n_gt: dict[int, int]
    n_det: dict[int, int]
    n_images: int
    iou_thr: float = IOU_THR
    match: str = "unmatched"
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """The report JSON (NaN -> null), plus counts, class names and warnings."""
        return json_ready({
            "map": self.map,
            "map_no14": self.map_no14,
            "per_class": {str(c): v for c, v in self.per_class.items()},
            "n_images": int(self.n_images),
            "iou_thr": self.iou_thr,
            "match": self.match,
            "n_gt": {str(c): int(v) for c, v in self.n_gt.items()},
            "n_det": {str(c): int(v) for c, v in self.n_det.items()},
            "class_names": {str(c): CLASS_NAMES[c] for c in range(NUM_CLASSES)},
            "warnings": list(self.warnings),
        })


def average_precision(tp_sorted: np.ndarray, n_gt: int) -> tuple[float, np.ndarray, np.ndarray]:
    """VOC 2010 all-point AP from TP flags in descending-confidence order.

    Returns ``(ap, precision, recall)``; AP is NaN without ground truth.
    """
    tp = np.asarray(tp_sorted, dtype=np.float64)
    ctp = np.cumsum(tp)
    cfp = np.cumsum(1.0 - tp)
    if n_gt == 0:
        return math.nan, np.zeros(0), np.zeros(0)
    recall = ctp / float(n_gt)
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])), precision, recall


@dataclass
class GroundTruth:
    """Ground truth as flat arrays: image index (into ``image_ids``), class and box per box."""

    image_ids: pd.Index
    img: np.ndarray
    cls: np.ndarray
    boxes: np.ndarray

    @classmethod
    def from_labels(cls, labels: pd.DataFrame) -> "GroundTruth":
        image_ids = pd.Index(pd.unique(labels["image_id"]))
        img = image_ids.get_indexer(labels["image_id"])
        cid = labels["class_id"].to_numpy(dtype=np.int64)
        boxes = labels[["x_min", "y_min", "x_max", "y_max"]].to_numpy(dtype=np.float64)
        normal = cid == NO_FINDING
        finding_img, finding_cls, finding_boxes = img[~normal], cid[~normal], boxes[~normal]
        normal_img = np.unique(img[normal])  # one [0,0,1,1] box per image, however many readers
        return cls(
            image_ids,
            np.concatenate([finding_img, normal_img]),
            np.concatenate([finding_cls, np.full(len(normal_img), NO_FINDING)]),
            np.concatenate([finding_boxes, np.tile(NORMAL_BOX, (len(normal_img), 1))]),
        )


def _pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of row i of ``a`` with row i of ``b`` (same formula as cxrdet.boxes.iou_matrix)."""
    iw = (np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])).clip(0)
    ih = (np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])).clip(0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_detections(gt: GroundTruth, img: np.ndarray, cls: np.ndarray, score: np.ndarray,
                     boxes: np.ndarray, iou_thr: float = IOU_THR, match: str = "unmatched") -> np.ndarray:
    """True-positive flag of every detection (in input order); ``img`` indexes ``gt.image_ids``."""
    if match not in MATCH_MODES:
        raise ValueError(f"match must be one of {MATCH_MODES}, got {match!r}")
    n_img = max(len(gt.image_ids), 1)
    tp = np.zeros(len(score), dtype=bool)
    if len(score) == 0 or len(gt.cls) == 0:
        return tp
    gkey = gt.cls * n_img + gt.img
    gord = np.argsort(gkey, kind="stable")
    gkey_s, gbox_s = gkey[gord], gt.boxes[gord]
    dord = np.lexsort((-score, img, cls))  # by class, image, then confidence; ties: input order
    dkey = (cls * n_img + img)[dord]
    start = np.searchsorted(gkey_s, dkey, "left")
    n_gt = np.searchsorted(gkey_s, dkey, "right") - start
    det_of_pair = np.repeat(np.arange(len(dord)), n_gt)
    offset = np.arange(len(det_of_pair)) - np.repeat(np.cumsum(n_gt) - n_gt, n_gt)
    gt_of_pair = start[det_of_pair] + offset
    iou = _pair_iou(boxes[dord][det_of_pair], gbox_s[gt_of_pair])
    cand = iou > iou_thr
    tp_s = np.zeros(len(dord), dtype=bool)
    # Groups with one ground-truth box: the first overlapping detection is the match.
    single = n_gt == 1
    hit = np.zeros(len(dord), dtype=bool)
    hit[det_of_pair[cand]] = True
    first = np.flatnonzero(single & hit)
    _, first_idx = np.unique(dkey[first], return_index=True)
    tp_s[first[first_idx]] = True
    # Groups with several boxes: greedy loop over the detections that overlap any of them.
    multi = np.flatnonzero((n_gt > 1) & hit)
    if len(multi):
        pair_start = np.cumsum(n_gt) - n_gt
        _match_multi(multi, dkey, start, n_gt, pair_start, iou, iou_thr, match, tp_s)
    tp[dord] = tp_s
    return tp


def _match_multi(dets, dkey, start, n_gt, pair_start, iou, iou_thr, match, tp_s) -> None:
    """Greedy matching in confidence order for detections of multi-box groups (in place)."""
    taken: dict[int, np.ndarray] = {}
    for d in dets:
        key = int(dkey[d])
        matched = taken.get(key)
        if matched is None:
            matched = taken[key] = np.zeros(n_gt[d], dtype=bool)
        row = iou[pair_start[d]: pair_start[d] + n_gt[d]]
        if match == "unmatched":
            row = np.where(matched, -1.0, row)
        j = int(np.argmax(row))
        if row[j] > iou_thr and not matched[j]:
            matched[j] = True
            tp_s[d] = True


def _det_arrays(det_df: pd.DataFrame, gt: GroundTruth, pred_image_ids: Iterable[str] | None,
                messages: list[str]):
    missing = [c for c in DET_COLUMNS if c not in det_df.columns]
    if missing:
        raise ValueError(f"detection frame lacks columns {missing}; expected {DET_COLUMNS}")
    cls = det_df["class_id"].to_numpy(dtype=np.int64)
    if len(cls) and (cls.min() < 0 or cls.max() >= NUM_CLASSES):
        raise ValueError(f"detection class_id must be in 0..{NUM_CLASSES - 1}, got {sorted(set(cls))}")
    img = gt.image_ids.get_indexer(det_df["image_id"])
    seen = pd.unique(pd.concat([det_df["image_id"], pd.Series(list(pred_image_ids or []), dtype=object)]))
    extra = [k for k in seen if k not in gt.image_ids]
    if extra:
        messages.append(f"{len(extra)} predicted image(s) absent from the ground truth were ignored "
                        f"({int((img < 0).sum())} detections), e.g. {extra[:5]}")
    seen_set = set(seen)
    no_pred = [k for k in gt.image_ids if k not in seen_set]
    if no_pred:
        messages.append(f"{len(no_pred)} ground-truth image(s) have no prediction row and count as "
                        f"no detections, e.g. {no_pred[:5]}")
    keep = img >= 0
    score = det_df["score"].to_numpy(dtype=np.float64)[keep]
    boxes = det_df[["x_min", "y_min", "x_max", "y_max"]].to_numpy(dtype=np.float64)[keep]
    return img[keep], cls[keep], score, boxes


def evaluate_detections(gt_labels_df: pd.DataFrame, det_df: pd.DataFrame, iou_thr: float = IOU_THR,
                        *, match: str = "unmatched",
                        pred_image_ids: Iterable[str] | None = None) -> MetricResult:
    """Score detections against ground-truth labels (see the module docstring for the rules).

    ``gt_labels_df``: a label frame (:func:`cxrdet.formats.labels.read_labels`); its images are the
    evaluated set. ``det_df``: :data:`DET_COLUMNS` in original pixels. ``pred_image_ids``: the
    images that had a prediction row (an empty PredictionString has no detection rows); by
    default the image ids present in ``det_df``.
    """
    gt = GroundTruth.from_labels(gt_labels_df)
    messages: list[str] = []
    img, cls, score, boxes = _det_arrays(det_df, gt, pred_image_ids, messages)
    for m in messages:
        warnings.warn(m, MetricWarning, stacklevel=2)
    tp = match_detections(gt, img, cls, score, boxes, iou_thr, match)
    result = summarize(tp, cls, score, gt.cls, len(gt.image_ids), iou_thr)
    result.match, result.warnings = match, messages
    return result


def summarize(tp: np.ndarray, cls: np.ndarray, score: np.ndarray, gt_cls: np.ndarray, n_images: int,
              iou_thr: float = IOU_THR) -> MetricResult:
    """Per-class AP and the means from per-detection TP flags (any order; sorted here)."""
    order = np.lexsort((-score, cls))
    cls_s, tp_s = cls[order], tp[order]
    bounds = np.searchsorted(cls_s, np.arange(NUM_CLASSES + 1))
    n_gt_all = np.bincount(gt_cls, minlength=NUM_CLASSES)
    per_class, prec, rec, n_gt, n_det = {}, {}, {}, {}, {}
    for c in range(NUM_CLASSES):
        ap, p, r = average_precision(tp_s[bounds[c]: bounds[c + 1]], int(n_gt_all[c]))
        per_class[c], prec[c], rec[c] = ap, p, r
        n_gt[c], n_det[c] = int(n_gt_all[c]), int(bounds[c + 1] - bounds[c])
    aps = np.array([per_class[c] for c in range(NUM_CLASSES)])
    return MetricResult(
        map=_nanmean(aps), map_no14=_nanmean(aps[:NO_FINDING]), per_class=per_class,
        precision=prec, recall=rec, n_gt=n_gt, n_det=n_det, n_images=n_images, iou_thr=iou_thr,
    )


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if len(x) else math.nan
