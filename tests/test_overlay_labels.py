"""Legible overlays: label placement (golden values), the overlay drawn from that layout, and the
prefix property the web page's score slider relies on."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cxrdet.detections import Detections
from cxrdet.inference.label_layout import LabelSpot, overlaps, place_labels
from cxrdet.inference.overlay import class_colour, draw_overlay, overlay_layout

FIVE = [(100 + 2 * i, 100 + i, 200 + 2 * i, 200 - i) for i in range(5)]  # one spot, five boxes


def _inside(rect, hw) -> bool:
    return rect[0] >= 0 and rect[1] >= 0 and rect[2] <= hw[1] and rect[3] <= hw[0]


def test_five_overlapping_boxes_get_five_disjoint_labels_inside_the_image():
    spots = place_labels(FIVE, [(80, 12)] * 5, (400, 400))
    assert spots == [
        LabelSpot((100, 88, 180, 100)),  # above the first box
        LabelSpot((102, 199, 182, 211)),  # below the second
        LabelSpot((104, 102, 184, 114)),  # inside the third, top left
        LabelSpot((106, 185, 186, 197)),  # inside the fourth, bottom left
        LabelSpot((108, 68, 188, 80), leader=(108, 104)),  # stacked above, joined by a leader
    ]
    for a, b in itertools.combinations(spots, 2):
        assert not overlaps(a.rect, b.rect)
    assert all(_inside(s.rect, (400, 400)) for s in spots)


def test_labels_avoid_reserved_areas_and_the_image_border():
    spots = place_labels([(0, 0, 50, 30)] * 3, [(60, 14)] * 3, (100, 100), reserved=[(0, 0, 40, 14)])
    assert spots == [LabelSpot((0, 30, 60, 44)), LabelSpot((0, 16, 60, 30)),
                     LabelSpot((0, 44, 60, 58), leader=(0, 0))]


def test_a_label_with_no_free_spot_left_is_none_and_never_overlaps():
    spots = place_labels([(0, 0, 100, 100)] * 3, [(100, 50)] * 3, (100, 100))
    assert spots == [LabelSpot((0, 0, 100, 50)), LabelSpot((0, 50, 100, 100)), None]


def test_a_crowded_picture_still_has_no_overlapping_labels():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 300, (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 80, (40, 2))], axis=1)
    spots = place_labels(boxes, [(70, 13)] * 40, (384, 384))
    placed = [s.rect for s in spots if s is not None]
    assert len(placed) >= 35
    assert all(_inside(r, (384, 384)) for r in placed)
    assert not any(overlaps(a, b) for a, b in itertools.combinations(placed, 2))


def test_placement_of_the_first_boxes_does_not_depend_on_the_boxes_after_them():
    # the page hides boxes below its score slider: what it still shows must stay where it was
    spots = place_labels(FIVE, [(80, 12)] * 5, (400, 400))
    for k in range(1, 5):
        assert place_labels(FIVE[:k], [(80, 12)] * k, (400, 400)) == spots[:k]


def test_place_labels_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="2 boxes but 1 label sizes"):
        place_labels(FIVE[:2], [(10, 10)], (50, 50))


def _five_aortic(score_step: float = 0.05) -> Detections:
    boxes = np.array(FIVE, dtype=np.float64) * 2  # original pixels: twice the 400 px picture
    return Detections(boxes, 0.9 - score_step * np.arange(5), np.zeros(5, dtype=np.int64))


def test_overlay_layout_maps_boxes_to_the_picture_and_labels_do_not_overlap():
    det = _five_aortic()
    layout = overlay_layout((400, 400), det, (800, 800), min_score=0.0)
    assert layout.picture_hw == (768, 768)  # enlarged so the text is legible
    assert [i.text for i in layout.items] == [f"Aortic enlargement {s:.2f}" for s in det.scores]
    np.testing.assert_array_equal(layout.items[0].box, np.round(np.array(FIVE[0]) * 768 / 400).astype(int))
    rects = [i.label.rect for i in layout.items]
    assert not any(overlaps(a, b) for a, b in itertools.combinations(rects, 2))
    with_normal = Detections(np.vstack([det.boxes, [[0, 0, 1, 1]]]), [*det.scores, 0.3], [0] * 5 + [14])
    layout = overlay_layout((400, 400), with_normal, (800, 800), min_score=0.0)
    banner = layout.banner[1].rect
    assert layout.banner[0] == "No finding 0.30" and banner[:2] == (0, 0)
    assert not any(overlaps(banner, i.label.rect) for i in layout.items)


def test_draw_overlay_paints_each_label_where_the_layout_puts_it():
    det = _five_aortic()
    image = np.full((400, 400), 40, dtype=np.uint8)
    canvas = draw_overlay(image, det, (800, 800), min_score=0.0)
    layout = overlay_layout(image.shape, det, (800, 800), min_score=0.0)
    colour = np.array(class_colour(0))
    for item in layout.items:
        x0, y0, x1, y1 = item.label.rect
        tag = canvas[y0:y1, x0:x1].reshape(-1, 3)
        # the filled tag: most of its pixels are the class colour (the rest is the text)
        assert (np.abs(tag.astype(int) - colour).sum(axis=1) == 0).mean() > 0.5
    assert layout.items[-1].label.leader is not None  # the stacked one has a leader line


def test_min_score_keeps_the_positions_of_the_labels_still_drawn():
    det = _five_aortic()
    full = overlay_layout((400, 400), det, (800, 800), min_score=0.0)
    cut = overlay_layout((400, 400), det, (800, 800), min_score=0.76)  # scores 0.9, 0.85, 0.8
    assert [i.label for i in cut.items] == [i.label for i in full.items[:3]]
