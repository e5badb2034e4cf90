"""Reader fusion: golden cases for each method and the image-level consistency rule."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdet.fusion import fuse_readers
from cxrdet.formats.labels import LABEL_COLUMNS
from label_fixtures import labels_frame


def box(image_id, class_id, rad, b):
    return dict(image_id=image_id, class_id=class_id, rad_id=rad, x_min=b[0], y_min=b[1], x_max=b[2], y_max=b[3])


def normal(image_id, rad):
    return dict(image_id=image_id, class_id=14, rad_id=rad)


@pytest.fixture
def labels():
    rows = [
        box("a", 0, "R1", (100, 100, 200, 200)),
        box("a", 0, "R2", (120, 100, 220, 200)),
        box("a", 0, "R3", (110, 100, 210, 200)),
        box("a", 8, "R1", (500, 500, 520, 520)),  # one reader only
        box("a", 3, "R2", (110, 100, 210, 200)),  # other class, same place: never fused with 0
        normal("b", "R1"), normal("b", "R2"), normal("b", "R3"),
        box("c", 3, "R1", (10, 10, 60, 60)),  # one reader's finding, two say normal
        normal("c", "R2"), normal("c", "R3"),
        box("d", 10, "R1", (0, 0, 30, 30)),  # one reader, two overlapping boxes
        box("d", 10, "R1", (2, 0, 32, 30)),
        box("d", 10, "R2", (300, 300, 330, 330)),
    ]
    return labels_frame(rows)


def rows_of(df, image_id, class_id):
    sub = df[(df.image_id == image_id) & (df.class_id == class_id)]
    return sub[["x_min", "y_min", "x_max", "y_max"]].to_numpy()


def test_wbf_averages_a_cluster_and_keeps_singletons(labels):
    out = fuse_readers(labels, "wbf", iou_thr=0.5)
    assert list(out.columns) == LABEL_COLUMNS and set(out.rad_id) == {"fused"}
    np.testing.assert_allclose(rows_of(out, "a", 0), [[110, 100, 210, 200]], atol=1e-3)
    np.testing.assert_allclose(rows_of(out, "a", 8), [[500, 500, 520, 520]], atol=1e-3)
    assert len(rows_of(out, "a", 3)) == 1
    assert list(out[out.image_id == "b"].class_id) == [14]
    assert np.isnan(rows_of(out, "b", 14)).all()
    assert list(out[out.image_id == "c"].class_id) == [3]  # a finding survives: no class 14 row
    assert len(rows_of(out, "d", 10)) == 2
    assert list(dict.fromkeys(out.image_id)) == ["a", "b", "c", "d"]


def test_wbf_iou_threshold_is_a_parameter(labels):
    # R1 and R2's class-0 boxes overlap with IoU 80/120 = 0.667: one cluster at 0.5, none at 0.9.
    assert len(rows_of(fuse_readers(labels, "wbf", iou_thr=0.9), "a", 0)) == 3


def test_sizes_do_not_change_fused_boxes(labels):
    sizes = {k: (1000, 800) for k in "abcd"}
    a = fuse_readers(labels, "wbf", image_sizes=sizes)
    b = fuse_readers(labels, "wbf")
    np.testing.assert_allclose(a[["x_min", "y_min", "x_max", "y_max"]].to_numpy(),
                               b[["x_min", "y_min", "x_max", "y_max"]].to_numpy(), atol=1e-3)


def test_nms_keeps_one_reader_box_per_cluster(labels):
    out = fuse_readers(labels, "nms", iou_thr=0.5)
    kept = rows_of(out, "a", 0)
    assert len(kept) == 1
    assert any(np.allclose(kept[0], b, atol=1e-3) for b in rows_of(labels, "a", 0))
    assert len(rows_of(out, "d", 10)) == 2  # the two R1 boxes overlap (IoU 0.875): one kept


def test_consensus_needs_distinct_readers(labels):
    out = fuse_readers(labels, "consensus", iou_thr=0.5, min_readers=2)
    np.testing.assert_allclose(rows_of(out, "a", 0), [[110, 100, 210, 200]], atol=1e-3)
    assert len(rows_of(out, "a", 8)) == 0 and len(rows_of(out, "a", 3)) == 0
    # c's only finding had one reader: c becomes a normal image with exactly one class-14 row
    assert list(out[out.image_id == "c"].class_id) == [14]
    # d: R1's two boxes are one reader, R2's box is elsewhere -> nothing reaches 2 readers
    assert list(out[out.image_id == "d"].class_id) == [14]
    three = fuse_readers(labels, "consensus", min_readers=3)
    assert len(rows_of(three, "a", 0)) == 1
    one = fuse_readers(labels, "consensus", min_readers=1)
    assert len(rows_of(one, "a", 8)) == 1


def test_none_keeps_every_box_and_one_normal_row(labels):
    out = fuse_readers(labels, "none")
    assert len(out[out.class_id != 14]) == len(labels[labels.class_id != 14])
    assert (out.class_id == 14).sum() == 1  # only b: c has a finding


def test_bad_parameters_raise(labels):
    with pytest.raises(ValueError, match="method"):
        fuse_readers(labels, "mean")
    with pytest.raises(ValueError, match="iou_thr"):
        fuse_readers(labels, "wbf", iou_thr=1.5)
    with pytest.raises(ValueError, match="min_readers"):
        fuse_readers(labels, "consensus", min_readers=0)


def test_consensus_needs_reader_ids(labels):
    labels.loc[0, "rad_id"] = ""
    with pytest.raises(ValueError, match="empty rad_id"):
        fuse_readers(labels, "consensus")
    assert len(fuse_readers(labels, "wbf")) > 0  # other methods do not count readers
