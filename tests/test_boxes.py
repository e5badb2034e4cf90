"""Box maths (cxrdet.boxes): golden values for every function of the one box convention."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdet.boxes import (
    as_boxes, box_area, clip_boxes, denormalize_boxes, hflip_boxes, iou_matrix, normalize_boxes,
    resized_hw, scale_boxes, valid_mask,
)


def test_as_boxes_shapes():
    assert as_boxes([]).shape == (0, 4) and as_boxes([]).dtype == np.float64
    assert as_boxes([[1, 2, 3, 4]]).tolist() == [[1.0, 2.0, 3.0, 4.0]]
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        as_boxes([1, 2, 3, 4])


@pytest.mark.parametrize("orig, size, expected", [
    ((2048, 1024), 512, (512, 256)),   # portrait: height is the long side
    ((1024, 2048), 512, (256, 512)),   # landscape
    ((100, 100), 64, (64, 64)),
    ((3000, 2500), 1024, (1024, 853)),  # 853.33 rounds down
    ((3000, 2501), 1024, (1024, 854)),  # 853.67 rounds up
    ((4, 1), 10, (10, 2)),              # 2.5: Python's round, half to even
    ((1, 1000), 512, (1, 512)),         # never below one pixel
])
def test_resized_hw_golden(orig, size, expected):
    assert resized_hw(orig, size) == expected


def test_resized_hw_rejects_empty_images():
    with pytest.raises(ValueError, match="positive"):
        resized_hw((0, 5), 512)


def test_scale_boxes_is_anisotropic_and_inverts():
    # 3000x2500 -> 1024x853: sy = 1024/3000, sx = 853/2500 (not the same ratio after rounding)
    boxes = np.array([[100.0, 300.0, 2500.0, 3000.0]])
    out = scale_boxes(boxes, (3000, 2500), (1024, 853))
    np.testing.assert_allclose(out, [[34.12, 102.4, 853.0, 1024.0]], rtol=0, atol=1e-12)
    np.testing.assert_allclose(scale_boxes(out, (1024, 853), (3000, 2500)), boxes, rtol=0, atol=1e-9)
    assert boxes.tolist() == [[100.0, 300.0, 2500.0, 3000.0]]  # the input is not modified
    assert scale_boxes([], (10, 10), (5, 5)).shape == (0, 4)


def test_clip_boxes_golden():
    boxes = np.array([[-5.0, -1, 120, 50], [10, 70, 20, 80]])
    np.testing.assert_array_equal(clip_boxes(boxes, (64, 100)), [[0, 0, 100, 50], [10, 64, 20, 64]])
    assert boxes[0, 0] == -5.0


def test_box_area_and_valid_mask_golden():
    boxes = np.array([[0, 0, 2, 3], [5, 5, 1, 1], [0, 0, 0.5, 2], [0, 0, np.nan, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(box_area(boxes[:3]), [6, 0, 1])  # inverted: 0
    assert valid_mask(boxes).tolist() == [True, False, False, False, True]
    assert valid_mask(boxes, min_size=0.5).tolist() == [True, False, True, False, True]


def test_iou_matrix_golden():
    a = np.array([[0, 0, 10, 10], [0, 0, 4, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [3, 3, 3, 3]])
    np.testing.assert_allclose(iou_matrix(a, b), [[1, 50 / 150, 0, 0], [0.4, 0, 0, 0]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(iou_matrix(b[:2], a), iou_matrix(a, b[:2]).T)
    assert iou_matrix(a, []).shape == (2, 0)
    assert iou_matrix([[1, 1, 1, 1]], [[1, 1, 1, 1]]).tolist() == [[0.0]]  # empty union: 0, not NaN


def test_normalize_and_back_golden():
    boxes = np.array([[256.0, 512, 768, 1024]])
    norm = normalize_boxes(boxes, (2048, 1024))  # x by width 1024, y by height 2048
    np.testing.assert_array_equal(norm, [[0.25, 0.25, 0.75, 0.5]])
    np.testing.assert_array_equal(denormalize_boxes(norm, (2048, 1024)), boxes)


def test_hflip_boxes_golden():
    boxes = np.array([[10.0, 5, 30, 20], [0, 0, 100, 1]])
    flipped = hflip_boxes(boxes, 100)
    np.testing.assert_array_equal(flipped, [[70, 5, 90, 20], [0, 0, 100, 1]])
    np.testing.assert_array_equal(hflip_boxes(flipped, 100), boxes)
