"""Box maths. The one box convention of cxrdet lives here.

Boxes are ``float64`` arrays of shape ``[N, 4]`` in ``xyxy`` order
``(x_min, y_min, x_max, y_max)``, in continuous pixel coordinates of a named image: pixel
``(row r, col c)`` covers ``[c, c+1) x [r, r+1)``, so a box over the whole image of height H and
width W is ``(0, 0, W, H)``. Sizes are always given as ``(height, width)`` tuples, as numpy
shapes are; x scales with width, y with height.

With continuous coordinates, resizing an image by ``(sh, sw)`` maps a box exactly by
multiplying x by ``sw`` and y by ``sh``; this matches OpenCV's pixel-centre convention, so a
box drawn on the original DICOM lands on the same anatomy in the cache image and back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HW = tuple[int, int]


def as_boxes(boxes: Sequence | np.ndarray) -> np.ndarray:
    """Return ``boxes`` as a float64 ``[N, 4]`` array (an empty input gives ``[0, 4]``)."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {arr.shape}")
    return arr


def resized_hw(orig_hw: HW, size: int) -> HW:
    """The cache size of an image: long side exactly ``size``, aspect ratio kept.

    This is the single definition used by preprocessing (to resize) and by inference (to map
    boxes back), so the two can never disagree.
    """
    h, w = int(orig_hw[0]), int(orig_hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    if h >= w:
        return size, max(1, int(round(w * size / h)))
    return max(1, int(round(h * size / w))), size


def scale_boxes(boxes: np.ndarray, src_hw: HW, dst_hw: HW) -> np.ndarray:
    """Map boxes from an image of size ``src_hw`` to the same content resized to ``dst_hw``.

    Anisotropic: x is scaled by dst_w/src_w and y by dst_h/src_h independently, which is exact
    even when rounding made the two ratios differ slightly.
    """
    b = as_boxes(boxes).copy()
    sy = dst_hw[0] / src_hw[0]
    sx = dst_hw[1] / src_hw[1]
    b[:, [0, 2]] *= sx
    b[:, [1, 3]] *= sy
    return b


def clip_boxes(boxes: np.ndarray, hw: HW) -> np.ndarray:
    """Clip boxes to the image ``[0, W] x [0, H]``."""
    b = as_boxes(boxes).copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, hw[1])
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, hw[0])
    return b


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Area of each box; degenerate (inverted) boxes have area 0."""
    b = as_boxes(boxes)
    return (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)


def valid_mask(boxes: np.ndarray, min_size: float = 1.0) -> np.ndarray:
    """True where a box is finite and at least ``min_size`` pixels wide and high."""
    b = as_boxes(boxes)
    finite = np.isfinite(b).all(axis=1)
    with np.errstate(invalid="ignore"):
        big = ((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size)
    return finite & big


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU, shape ``[len(a), len(b)]``; 0 where the union is empty."""
    a, b = as_boxes(a), as_boxes(b)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clip(0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def normalize_boxes(boxes: np.ndarray, hw: HW) -> np.ndarray:
    """Pixel boxes -> fractions of the image in ``[0, 1]`` (what ensemble-boxes expects)."""
    return scale_boxes(boxes, hw, (1, 1))


def denormalize_boxes(boxes: np.ndarray, hw: HW) -> np.ndarray:
    """Fractions of the image -> pixel boxes of an image of size ``hw``."""
    return scale_boxes(boxes, (1, 1), hw)


def hflip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Mirror boxes for an image flipped left-right of the given width."""
    b = as_boxes(boxes).copy()
    b[:, [0, 2]] = width - b[:, [2, 0]]
    return b
