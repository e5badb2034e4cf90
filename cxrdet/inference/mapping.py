"""Detections in cache pixels -> ORIGINAL DICOM pixels, the coordinates of the submission.

The cache image of an original of size ``orig_hw`` has size ``resized_hw(orig_hw, size)``
(:mod:`cxrdet.boxes`, the rule preprocessing resized with), so mapping back is the anisotropic
scale ``cache_hw -> orig_hw``; boxes are then clipped to the original image and boxes that
became degenerate (thinner than a pixel of the original) are dropped.
"""

from __future__ import annotations

from cxrdet.boxes import HW, clip_boxes, scale_boxes, valid_mask
from cxrdet.detections import Detections

MIN_BOX_PX = 1.0  # a submitted box must be at least one original pixel wide and high


def to_original(det: Detections, cache_hw: HW, orig_hw: HW) -> Detections:
    """Map ``det`` from the cache image (``cache_hw``) to the original DICOM (``orig_hw``)."""
    boxes = clip_boxes(scale_boxes(det.boxes, cache_hw, orig_hw), orig_hw)
    mapped = Detections(boxes, det.scores, det.class_ids)
    return mapped.select(valid_mask(boxes, min_size=MIN_BOX_PX))

