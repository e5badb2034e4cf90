"""Where box labels go so that no two overlap: one rule for the overlay PNGs and the web page.

Labels are placed one at a time in priority order (highest score first), each at the first
free spot: the six spots touching its box (above / below / inside, left- or right-aligned);
when all of those are taken, a spot stacked further above or below the box (nearest first);
failing that, the free spot of a grid over the picture nearest to the box's top-left corner.
A label that does not touch its box is joined to the box's top-left corner by a leader line. A spot is free when it lies
inside the picture and overlaps no label placed before it (nor a reserved area such as the
"No finding" banner). A label with no free spot left is not drawn (its box still is).

Because each label only sees those placed before it, the labels of the first k boxes are
placed the same whatever follows them: a page that hides low-score boxes (a score slider) shows
the same label positions as an overlay drawn from that score on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in picture pixels, x1/y1 exclusive


@dataclass(frozen=True)
class LabelSpot:
    """Where one label goes; ``leader`` is the box corner a line joins it to (None: attached)."""

    rect: Rect
    leader: tuple[int, int] | None = None


def overlaps(a: Rect, b: Rect) -> bool:
    """Whether two rectangles share area (touching edges do not count)."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def attached_spots(box: Sequence[float], size: tuple[int, int]) -> np.ndarray:
    """The top-left corners of the six spots touching ``box`` for a label of ``size`` (w, h):
    above-left, below-left, inside-top-left, above-right, below-right, inside-bottom-left."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    w, h = size
    return np.array([(x0, y0 - h), (x0, y1), (x0, y0), (x1 - w, y0 - h), (x1 - w, y1), (x0, y1 - h)])


def stacked_spots(box: Sequence[float], size: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """Top-left corners of label spots stacked away from ``box``, left-aligned with it: one
    label height further above, then further below, alternating, nearest first."""
    x0, y0, _, y1 = (int(round(v)) for v in box)
    h = size[1]
    steps = max(1, image_hw[0] // max(h, 1) + 1)
    above = [(x0, y0 - h * (k + 1)) for k in range(1, steps + 1)]
    below = [(x0, y1 + h * k) for k in range(1, steps + 1)]
    return np.array([spot for pair in zip(above, below) for spot in pair]).reshape(-1, 2)


def grid_spots(anchor: tuple[int, int], size: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """Top-left corners of a grid of label-sized spots inside the picture, nearest to ``anchor``
    first (steps of half a label height and a quarter of its width)."""
    w, h = size
    height, width = image_hw
    xs = np.arange(0, max(width - w, 0) + 1, max(1, w // 4))
    ys = np.arange(0, max(height - h, 0) + 1, max(1, h // 2))
    gx, gy = np.meshgrid(xs, ys)
    spots = np.stack([gx.ravel(), gy.ravel()], axis=1)
    dist = (spots[:, 0] - anchor[0]) ** 2 + (spots[:, 1] - anchor[1]) ** 2
    return spots[np.argsort(dist, kind="stable")]


def _first_free(corners: np.ndarray, size: tuple[int, int], image_hw: tuple[int, int],
                taken: np.ndarray, clamp_x: bool) -> Rect | None:
    """The first of ``corners`` whose label rectangle is inside the picture and free."""
    if len(corners) == 0:
        return None
    w, h = size
    height, width = image_hw
    x = np.clip(corners[:, 0], 0, max(width - w, 0)) if clamp_x else corners[:, 0]
    y = corners[:, 1]
    rects = np.stack([x, y, x + w, y + h], axis=1)
    ok = (rects[:, 0] >= 0) & (rects[:, 1] >= 0) & (rects[:, 2] <= width) & (rects[:, 3] <= height)
    if len(taken):
        hit = ((rects[:, None, 0] < taken[None, :, 2]) & (taken[None, :, 0] < rects[:, None, 2])
               & (rects[:, None, 1] < taken[None, :, 3]) & (taken[None, :, 1] < rects[:, None, 3]))
        ok &= ~hit.any(axis=1)
    index = np.flatnonzero(ok)
    return tuple(int(v) for v in rects[index[0]]) if len(index) else None  # type: ignore[return-value]


def place_labels(boxes: Sequence[Sequence[float]], sizes: Sequence[tuple[int, int]],
                 image_hw: tuple[int, int], reserved: Sequence[Rect] = ()) -> list[LabelSpot | None]:
    """One spot per box (in the given order, which is the priority), labels never overlapping.

    ``boxes``: xyxy in picture pixels; ``sizes``: (width, height) of each label; ``image_hw``:
    the picture's (height, width); ``reserved``: areas no label may cover.
    """
    if len(boxes) != len(sizes):
        raise ValueError(f"{len(boxes)} boxes but {len(sizes)} label sizes")
    taken = [tuple(int(v) for v in r) for r in reserved]
    spots: list[LabelSpot | None] = []
    for box, size in zip(boxes, sizes):
        size = (int(size[0]), int(size[1]))
        occupied = np.asarray(taken, dtype=np.int64).reshape(-1, 4)
        rect = _first_free(attached_spots(box, size), size, image_hw, occupied, clamp_x=True)
        spot = LabelSpot(rect) if rect else None
        if rect is None:
            anchor = (int(round(box[0])), int(round(box[1])))
            rect = _first_free(stacked_spots(box, size, image_hw), size, image_hw, occupied, clamp_x=True)
            if rect is None:
                rect = _first_free(grid_spots(anchor, size, image_hw), size, image_hw, occupied, clamp_x=False)
            spot = LabelSpot(rect, anchor) if rect else None
        spots.append(spot)
        if rect is not None:
            taken.append(rect)
    return spots
