"""Overlay pictures: the image with its predicted boxes, coloured by class, labelled with scores.

Overlays are drawn on the cache-size image (the original can be 3000 px and more); the boxes
handed in are the submitted ones in ORIGINAL pixels and are mapped to the picture with
:func:`cxrdet.boxes.scale_boxes`, so the picture shows exactly what was submitted.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from cxrdet.boxes import HW, clip_boxes, scale_boxes
from cxrdet.classes import CLASS_NAMES, NO_FINDING
from cxrdet.detections import Detections
from cxrdet.errors import safe_child
from cxrdet.formats.atomic import write_bytes

# One colour per finding (BGR): tab20-like, chosen to stay distinct on a grey X-ray.
PALETTE_BGR: tuple[tuple[int, int, int], ...] = (
    (180, 119, 31),
    (14, 127, 255),
    (44, 160, 44),
    (40, 39, 214),
    (189, 103, 148),
    (75, 86, 140),
    (194, 119, 227),
    (34, 189, 188),
    (207, 190, 23),
    (232, 199, 174),
    (120, 187, 255),
    (138, 223, 152),
    (150, 152, 255),
    (213, 176, 197),
)


def class_colour(class_id: int) -> tuple[int, int, int]:
    """The BGR colour of a finding class (class 14 has no box, so it gets white)."""
    return PALETTE_BGR[class_id] if 0 <= class_id < len(PALETTE_BGR) else (255, 255, 255)


MIN_LONG_SIDE = 768  # small caches are enlarged so that label text stays legible


def draw_overlay(
    image: np.ndarray, det: Detections, orig_hw: HW, min_score: float = 0.3, max_boxes: int = 40
) -> np.ndarray:
    """A BGR picture of ``image`` (uint8 grey, any size) with ``det`` (original pixels) drawn.

    Only the ``max_boxes`` best boxes scoring at least ``min_score`` are drawn so the picture
    stays readable (the submission keeps them all: low-score boxes cost nothing under
    mAP@0.4). A "No finding" call is written as a banner at the top instead of its token box
    ``0 0 1 1``.
    """
    image = np.ascontiguousarray(image)
    grow = MIN_LONG_SIDE / max(image.shape[:2])
    if grow > 1:
        size = (round(image.shape[1] * grow), round(image.shape[0] * grow))
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    h, w = image.shape[:2]
    thick = max(1, round(max(h, w) / 400))
    font_scale = max(0.4, max(h, w) / 1600)
    finding = det.class_ids != NO_FINDING
    shown = det.select(finding & (det.scores >= min_score)).sorted()
    shown = shown.select(np.arange(len(shown)) < max_boxes)
    boxes = clip_boxes(scale_boxes(shown.boxes, orig_hw, (h, w)), (h, w)).round().astype(int)
    # lowest score first so the most confident boxes are drawn on top
    for box, score, cid in reversed(list(zip(boxes, shown.scores, shown.class_ids))):
        colour = class_colour(int(cid))
        x0, y0, x1, y1 = box.tolist()
        cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, thick)
        _label(canvas, f"{CLASS_NAMES[int(cid)]} {score:.2f}", (x0, y0), colour, font_scale, thick)
    normal = det.select(det.class_ids == NO_FINDING)
    if len(normal):
        text = f"{CLASS_NAMES[NO_FINDING]} {normal.scores.max():.2f}"
        _label(canvas, text, (0, 0), (255, 255, 255), font_scale, thick, inside=True)
    return canvas


def _label(
    canvas: np.ndarray,
    text: str,
    at: tuple[int, int],
    colour: tuple[int, int, int],
    font_scale: float,
    thick: int,
    inside: bool = False,
) -> None:
    """Text on a filled tag above the box corner ``at`` (below it when there is no room)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), base = cv2.getTextSize(text, font, font_scale, max(1, thick // 2))
    x, y = at
    top = y - th - base - 2
    if inside or top < 0:
        top = y
    x = min(max(0, x), max(0, canvas.shape[1] - tw - 2))
    cv2.rectangle(canvas, (x, top), (x + tw + 2, top + th + base + 2), colour, cv2.FILLED)
    ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    cv2.putText(canvas, text, (x + 1, top + th + 1), font, font_scale, ink, max(1, thick // 2), cv2.LINE_AA)


def write_overlay(
    vis_dir: str | os.PathLike,
    image_id: str,
    image: np.ndarray,
    det: Detections,
    orig_hw: HW,
    min_score: float = 0.3,
) -> Path:
    """Draw and write ``<vis_dir>/<image_id>.png``; ids that would leave ``vis_dir`` are refused."""
    path = safe_child(vis_dir, image_id, ".png")
    ok, png = cv2.imencode(".png", draw_overlay(image, det, orig_hw, min_score))
    if not ok:
        raise OSError(f"could not encode overlay {path} as PNG")
    return write_bytes(path, png.tobytes())
