"""Overlay pictures: the image with its predicted boxes, coloured by class, labelled with scores.

Labels never overlap (:mod:`cxrdet.inference.label_layout`): where several boxes of one class
pile up, their labels stack beside them, joined by leader lines when they cannot touch.

Overlays are drawn on the cache-size image (the original can be 3000 px and more); the boxes
handed in are the submitted ones in ORIGINAL pixels and are mapped to the picture with
:func:`cxrdet.boxes.scale_boxes`, so the picture shows exactly what was submitted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cxrdet.boxes import HW, clip_boxes, scale_boxes
from cxrdet.classes import CLASS_NAMES, NO_FINDING
from cxrdet.detections import Detections
from cxrdet.errors import safe_child
from cxrdet.formats.atomic import write_bytes
from cxrdet.inference.label_layout import LabelSpot, place_labels

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
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class OverlayItem:
    """One drawn box: picture pixels, its label text and where the label goes."""

    box: tuple[int, int, int, int]
    class_id: int
    score: float
    text: str
    label: LabelSpot | None  # None: no free spot was left, the box is drawn without a label


@dataclass
class OverlayLayout:
    """Everything an overlay shows, in the pixels of the (possibly enlarged) picture.

    The web page of ``cxrdet serve`` draws from this same layout, so its labels sit exactly
    where the overlay PNGs put them.
    """

    picture_hw: tuple[int, int]
    font_scale: float
    thickness: int
    items: list[OverlayItem]  # highest score first
    banner: tuple[str, LabelSpot] | None  # the "No finding" call, top left


def picture_hw(image_hw: tuple[int, int]) -> tuple[int, int]:
    """The overlay's size for a cache image of ``image_hw``: enlarged to a long side of
    :data:`MIN_LONG_SIDE` when smaller, else unchanged."""
    h, w = int(image_hw[0]), int(image_hw[1])
    grow = MIN_LONG_SIDE / max(h, w)
    return (round(h * grow), round(w * grow)) if grow > 1 else (h, w)


def label_size(text: str, font_scale: float, thickness: int) -> tuple[int, int]:
    """(width, height) of a label tag: the text plus a one-pixel margin."""
    (tw, th), base = cv2.getTextSize(text, FONT, font_scale, max(1, thickness // 2))
    return tw + 2, th + base + 2


def overlay_layout(
    image_hw: tuple[int, int], det: Detections, orig_hw: HW, min_score: float = 0.3, max_boxes: int = 40
) -> OverlayLayout:
    """The boxes an overlay draws and where their labels go (:func:`place_labels`).

    Only the ``max_boxes`` best boxes scoring at least ``min_score`` are drawn so the picture
    stays readable (the submission keeps them all: low-score boxes cost nothing under
    mAP@0.4). A "No finding" call is a banner at the top instead of its token box ``0 0 1 1``.
    """
    h, w = picture_hw(image_hw)
    thick = max(1, round(max(h, w) / 400))
    font_scale = max(0.4, max(h, w) / 1600)
    finding = det.class_ids != NO_FINDING
    shown = det.select(finding & (det.scores >= min_score)).sorted()
    shown = shown.select(np.arange(len(shown)) < max_boxes)
    boxes = clip_boxes(scale_boxes(shown.boxes, orig_hw, (h, w)), (h, w)).round().astype(int)
    texts = [f"{CLASS_NAMES[int(c)]} {s:.2f}" for c, s in zip(shown.class_ids, shown.scores)]
    banner, reserved = None, []
    normal = det.select(det.class_ids == NO_FINDING)
    if len(normal):
        text = f"{CLASS_NAMES[NO_FINDING]} {normal.scores.max():.2f}"
        bw, bh = label_size(text, font_scale, thick)
        banner = (text, LabelSpot((0, 0, bw, bh)))
        reserved.append(banner[1].rect)
    spots = place_labels(boxes, [label_size(t, font_scale, thick) for t in texts], (h, w), reserved)
    items = [OverlayItem(tuple(b.tolist()), int(c), float(s), t, spot)
             for b, c, s, t, spot in zip(boxes, shown.class_ids, shown.scores, texts, spots)]
    return OverlayLayout((h, w), font_scale, thick, items, banner)


def draw_overlay(
    image: np.ndarray, det: Detections, orig_hw: HW, min_score: float = 0.3, max_boxes: int = 40
) -> np.ndarray:
    """A BGR picture of ``image`` (uint8 grey, any size) with ``det`` (original pixels) drawn
    as :func:`overlay_layout` lays it out: boxes, then labels that never overlap."""
    layout = overlay_layout(image.shape[:2], det, orig_hw, min_score, max_boxes)
    image = np.ascontiguousarray(image)
    h, w = layout.picture_hw
    if (h, w) != image.shape[:2]:
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    thick = layout.thickness
    for item in reversed(layout.items):  # lowest score first: the most confident box on top
        x0, y0, x1, y1 = item.box
        cv2.rectangle(canvas, (x0, y0), (x1, y1), class_colour(item.class_id), thick)
    for item in layout.items:
        if item.label is not None:
            _label(canvas, item.text, item.label, class_colour(item.class_id), layout.font_scale, thick)
    if layout.banner is not None:
        _label(canvas, layout.banner[0], layout.banner[1], (255, 255, 255), layout.font_scale, thick)
    return canvas


def leader_end(rect: tuple[int, int, int, int], anchor: tuple[int, int]) -> tuple[int, int]:
    """The point of a label rectangle nearest to the box corner its leader line joins."""
    return (min(max(anchor[0], rect[0]), rect[2] - 1), min(max(anchor[1], rect[1]), rect[3] - 1))


def _label(canvas: np.ndarray, text: str, spot: LabelSpot, colour: tuple[int, int, int],
           font_scale: float, thick: int) -> None:
    """Text on a filled tag at ``spot`` (with its leader line, if any)."""
    x0, y0, x1, y1 = spot.rect
    if spot.leader is not None:
        cv2.line(canvas, leader_end(spot.rect, spot.leader), spot.leader, colour, max(1, thick // 2), cv2.LINE_AA)
    cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), colour, cv2.FILLED)
    ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    (_, th), _ = cv2.getTextSize(text, FONT, font_scale, max(1, thick // 2))
    cv2.putText(canvas, text, (x0 + 1, y0 + th + 1), FONT, font_scale, ink, max(1, thick // 2), cv2.LINE_AA)


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
    return write_bytes(path, overlay_png(image, det, orig_hw, min_score))


def overlay_png(image: np.ndarray, det: Detections, orig_hw: HW, min_score: float = 0.3) -> bytes:
    """The overlay of :func:`draw_overlay` as PNG bytes (what ``write_overlay`` writes)."""
    ok, buf = cv2.imencode(".png", draw_overlay(image, det, orig_hw, min_score))
    if not ok:
        raise ValueError(f"OpenCV could not encode an overlay of an image of shape {image.shape} as PNG")
    return buf.tobytes()
