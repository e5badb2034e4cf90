"""What a heatmap says about location: its peak (the pointing game) and boxes drawn from it.

Both work in the heatmap's own pixels, with the box convention of :mod:`cxrdet.boxes`
(continuous ``xyxy``; pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``).

- Pointing game: a hit when the heatmap's maximum falls inside a ground-truth box of the class.
  The maximum is the centre of the pixels within ``PLATEAU`` of the top value: Grad-CAM maps are
  upsampled from a coarse grid (16 x 16 for a ResNet at 512 px), and the upsampling turns a
  peak in a border cell into a flat block, whose first pixel would sit on the image edge. The
  chance level of an image is the share of its area the class's boxes cover: where a random
  point would land.
- Heatmap boxes: threshold at ``threshold`` x the maximum, split into 8-connected components
  (OpenCV), one bounding box per component of at least ``min_area`` pixels.
"""

from __future__ import annotations

import cv2
import numpy as np

from cxrdet.boxes import as_boxes

DEFAULT_THRESHOLD = 0.5  # of the heatmap's maximum: Grad-CAM papers' usual cut for weak boxes
DEFAULT_MIN_AREA = 4  # components smaller than this (heatmap pixels) are interpolation speckle
PLATEAU = 1e-3  # pixels within this (relative) of the maximum belong to the peak


def peak(heatmap: np.ndarray) -> tuple[float, float]:
    """``(x, y)`` (continuous pixel coordinates) of the centre of the heatmap's top plateau."""
    h = np.asarray(heatmap, dtype=np.float64)
    top = float(h.max())
    rows, cols = np.nonzero(h >= top - PLATEAU * abs(top))
    return float(cols.mean() + 0.5), float(rows.mean() + 0.5)


def pointing_hit(heatmap: np.ndarray, boxes: np.ndarray) -> bool:
    """Whether the heatmap's :func:`peak` lies inside any of ``boxes`` (heatmap pixels)."""
    x, y = peak(heatmap)
    b = as_boxes(boxes)
    return bool(((b[:, 0] <= x) & (x <= b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 3])).any())


def covered_share(boxes: np.ndarray, hw: tuple[int, int]) -> float:
    """The share of an ``hw`` image whose pixel centres lie in the union of ``boxes``."""
    h, w = int(hw[0]), int(hw[1])
    ys, xs = np.arange(h) + 0.5, np.arange(w) + 0.5
    mask = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in as_boxes(boxes):
        rows = (ys >= y0) & (ys <= y1)
        cols = (xs >= x0) & (xs <= x1)
        mask |= rows[:, None] & cols[None, :]
    return float(mask.mean()) if mask.size else 0.0


def heatmap_boxes(heatmap: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                  min_area: int = DEFAULT_MIN_AREA) -> np.ndarray:
    """``[N, 4]`` boxes (heatmap pixels) of the components above ``threshold`` x the maximum."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    top = float(np.max(heatmap)) if heatmap.size else 0.0
    if top <= 0.0:
        return as_boxes([])
    mask = (np.asarray(heatmap) >= threshold * top).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = [s for s in stats[1:] if s[cv2.CC_STAT_AREA] >= min_area]  # label 0 is the background
    return as_boxes([[s[cv2.CC_STAT_LEFT], s[cv2.CC_STAT_TOP], s[cv2.CC_STAT_LEFT] + s[cv2.CC_STAT_WIDTH],
                      s[cv2.CC_STAT_TOP] + s[cv2.CC_STAT_HEIGHT]] for s in keep])
