"""Fusing whole submissions (any framework) per image with ensemble-boxes, class 14 explicitly.

Finding boxes (class 0..13) are normalised by each image's ORIGINAL size (what ensemble-boxes
expects: [0, 1] coordinates), clipped, and fused per class across submissions by WBF, NMS or
soft-NMS with the submissions' weights; the result is mapped back to original pixels. The
input lists are prepared as for TTA/ensemble fusion (:func:`cxrdet.inference.tta.ensemble_inputs`);
``tta.fuse_runs`` itself does not fit: it has no weights, WBF only, and returns a single run as is.

Class 14 ("No finding", written ``14 p 0 0 1 1``) is an image-level probability, not a box, so
it never enters box fusion (its ``0 0 1 1`` box would cluster with nothing and only inflate
normalisation). The rule: the fused class-14 score of an image is the weighted mean of the
submissions' class-14 scores, ``p14 = sum_i w_i s_i / sum_i w_i``, where ``s_i`` is submission
i's class-14 score for the image (its highest, if it lists several) and 0 when it has none;
the image gets one ``14 p14 0 0 1 1`` when ``p14 > 0``.

Weights follow ensemble-boxes: WBF multiplies each score by its submission's weight (and
``conf_type`` decides the cluster score); NMS and soft-NMS rescale each score to
``s * w_i / sum(w)`` before suppressing (so with 2 equal weights every kept score is halved:
the ranking, which is all mAP looks at, is unchanged). ensemble-boxes' soft-NMS uses the
decayed scores only to decide which boxes stay (decayed score > ``soft_thresh``) and returns the
kept boxes with their undecayed weighted scores.

Fusing one submission with itself by WBF returns it unchanged (within float32 rounding) as
long as no two boxes of one class in an image overlap above ``iou_thr`` (WBF would merge
those within one submission too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cxrdet.boxes import HW, denormalize_boxes
from cxrdet.classes import NO_FINDING
from cxrdet.detections import Detections, normal_detection
from cxrdet.inference.tta import ensemble_inputs

METHODS = ("wbf", "nms", "soft-nms")
CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")  # ensemble-boxes 1.0.9's WBF


@dataclass(frozen=True)
class SubmissionFusion:
    """How submissions are fused (defaults: the competition's IoU, keep every box)."""

    method: str = "wbf"  # the 2nd-place VinBigData ensembles fused frameworks with WBF
    iou_thr: float = 0.4  # the metric's IoU: boxes that would match the same finding are one
    skip_box_thr: float = 0.0  # low-score boxes cost nothing under mAP@0.4
    conf_type: str = "avg"  # WBF: a box seen by only some submissions is down-weighted
    sigma: float = 0.5  # soft-NMS Gaussian width (ensemble-boxes' default)
    soft_thresh: float = 0.001  # soft-NMS drops boxes whose decayed score falls below this

    def check(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"fusion method must be one of {METHODS}, got {self.method!r}")
        if self.conf_type not in CONF_TYPES:
            raise ValueError(f"conf_type must be one of {CONF_TYPES}, got {self.conf_type!r}")
        if not 0.0 < self.iou_thr < 1.0:
            raise ValueError(f"iou_thr must be in (0, 1), got {self.iou_thr}")
        if not 0.0 <= self.skip_box_thr < 1.0:
            raise ValueError(f"skip_box_thr must be in [0, 1), got {self.skip_box_thr}")


def no_finding_score(runs: Sequence[Detections], weights: Sequence[float]) -> float:
    """The class-14 rule: weighted mean of each run's class-14 score, absent = 0."""
    w = np.asarray(weights, np.float64)
    s = np.array([float(d.scores[d.class_ids == NO_FINDING].max(initial=0.0)) for d in runs])
    return float((w * s).sum() / w.sum())


def _fuse_findings(runs: Sequence[Detections], weights: Sequence[float], hw: HW,
                   cfg: SubmissionFusion) -> Detections:
    from ensemble_boxes import nms, soft_nms, weighted_boxes_fusion  # imports numba: only when fusing

    findings = [d.select(d.class_ids != NO_FINDING) for d in runs]  # class 14 is not a box (module doc)
    boxes, scores, labels = ensemble_inputs(findings, hw)
    if not any(boxes):
        return Detections.empty()
    w = [float(x) for x in weights]
    if cfg.method == "wbf":
        fb, fs, fl = weighted_boxes_fusion(boxes, scores, labels, weights=w, iou_thr=cfg.iou_thr,
                                           skip_box_thr=cfg.skip_box_thr, conf_type=cfg.conf_type)
    elif cfg.method == "nms":
        fb, fs, fl = nms(boxes, scores, labels, iou_thr=cfg.iou_thr, weights=w)
    else:
        fb, fs, fl = soft_nms(boxes, scores, labels, iou_thr=cfg.iou_thr, sigma=cfg.sigma,
                              thresh=cfg.soft_thresh, weights=w)
    fs = np.asarray(fs, np.float64)
    keep = fs >= cfg.skip_box_thr
    return Detections(denormalize_boxes(np.asarray(fb, np.float64).reshape(-1, 4)[keep], hw),
                      np.clip(fs[keep], 0.0, 1.0), np.asarray(fl).round().astype(np.int64)[keep])


def fuse_image(runs: Sequence[Detections], weights: Sequence[float], hw: HW | None,
               cfg: SubmissionFusion = SubmissionFusion()) -> Detections:
    """One image's predictions from several submissions (original pixels) -> fused, best first.

    ``hw`` is the original (rows, columns); it may be None only when no run has a finding box.
    """
    cfg.check()
    if len(runs) != len(weights) or not runs:
        raise ValueError(f"need one weight per run, got {len(runs)} run(s) and {len(weights)} weight(s)")
    if any(float(w) <= 0 for w in weights):
        raise ValueError(f"weights must be > 0, got {list(weights)}")
    has_boxes = any((d.class_ids != NO_FINDING).any() for d in runs)
    if has_boxes and hw is None:
        raise ValueError("an image with finding boxes needs its original size to be fused")
    findings = _fuse_findings(runs, weights, hw, cfg) if has_boxes else Detections.empty()
    p14 = no_finding_score(runs, weights)
    if p14 > 0:
        findings = Detections.concat([findings, normal_detection(p14)])
    return findings.sorted()
