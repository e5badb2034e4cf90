"""Test-time augmentation and checkpoint ensembling, merged with weighted boxes fusion.

Every run (one checkpoint, one view: plain or horizontally flipped) gives detections in cache
pixels. Flipped views are mirrored back first; then all runs of an image are fused per class
with ensemble-boxes' WBF on boxes normalized by the image size (what the library expects) and
scaled back. A single run is returned unchanged: fusing one run with itself would only
re-weight scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from ensemble_boxes import weighted_boxes_fusion

from cxrdet.boxes import HW, clip_boxes, denormalize_boxes, hflip_boxes, normalize_boxes, valid_mask
from cxrdet.detections import Detections

TTA_CHOICES = ("none", "hflip")

# detector call: list of uint8 cache images -> one Detections per image (cache pixels)
PredictFn = Callable[[Sequence[np.ndarray]], list[Detections]]


@dataclass(frozen=True)
class FusionConfig:
    """How runs are merged (defaults follow the 2nd-place VinBigData solution's WBF use)."""

    iou_thr: float = 0.55  # ensemble-boxes' default; 0.5-0.6 worked best on this data
    skip_box_thr: float = 0.0  # keep low-score boxes: they cost nothing under mAP@0.4
    conf_type: str = "avg"  # a box seen by only some runs is down-weighted


def views(tta: str) -> tuple[bool, ...]:
    """The flip flags of the views to run for a TTA mode (False = the plain image)."""
    if tta not in TTA_CHOICES:
        raise ValueError(f"unknown TTA mode {tta!r}; expected one of {TTA_CHOICES}")
    return (False, True) if tta == "hflip" else (False,)


def run_views(predict_fns: Sequence[PredictFn], images: Sequence[np.ndarray], tta: str) -> list[list[Detections]]:
    """Run every detector on every view; result[i] lists image i's runs, boxes unflipped."""
    runs: list[list[Detections]] = [[] for _ in images]
    for fn in predict_fns:
        for flip in views(tta):
            batch = [np.ascontiguousarray(im[:, ::-1]) for im in images] if flip else list(images)
            for i, (im, det) in enumerate(zip(images, fn(batch))):
                if flip:
                    det = Detections(hflip_boxes(det.boxes, im.shape[1]), det.scores, det.class_ids)
                runs[i].append(det)
    return runs


def ensemble_inputs(runs: Sequence[Detections], hw: HW) -> tuple[list, list, list]:
    """ensemble-boxes' input lists (per run: boxes clipped and normalised by ``hw``, scores, labels).

    ensemble-boxes warns about (and clamps) boxes outside [0, 1] and zero-area boxes; doing it
    here keeps the log clean and the behaviour explicit.
    """
    boxes_list, scores_list, labels_list = [], [], []
    for det in runs:
        norm = normalize_boxes(clip_boxes(det.boxes, hw), hw)
        keep = valid_mask(norm, min_size=1e-9)
        boxes_list.append(norm[keep].tolist())
        scores_list.append(det.scores[keep].tolist())
        labels_list.append(det.class_ids[keep].tolist())
    return boxes_list, scores_list, labels_list


def fuse_runs(runs: Sequence[Detections], hw: HW, config: FusionConfig = FusionConfig()) -> Detections:
    """WBF over several runs of one image (boxes in pixels of an image of size ``hw``)."""
    if len(runs) == 1:
        return runs[0]
    boxes_list, scores_list, labels_list = ensemble_inputs(runs, hw)
    boxes, scores, labels = weighted_boxes_fusion(
        boxes_list,
        scores_list,
        labels_list,
        iou_thr=config.iou_thr,
        skip_box_thr=config.skip_box_thr,
        conf_type=config.conf_type,
    )
    if len(scores) == 0:
        return Detections.empty()
    return Detections(
        denormalize_boxes(np.asarray(boxes), hw),
        np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0),
        np.asarray(labels).round().astype(np.int64),
    ).sorted()


def predict_fused(
    predict_fns: Sequence[PredictFn],
    images: Sequence[np.ndarray],
    tta: str = "none",
    config: FusionConfig = FusionConfig(),
) -> list[Detections]:
    """Detections per image (cache pixels) from all detectors and views, fused with WBF."""
    runs = run_views(predict_fns, images, tta)
    return [fuse_runs(r, im.shape[:2], config) for r, im in zip(runs, images)]
