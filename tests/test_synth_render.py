"""Synthetic data pieces without files: plan mix, readers, lesion placement and visibility."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from cxrdet.boxes import iou_matrix, resized_hw, scale_boxes
from cxrdet.classes import NAME_TO_ID, NO_FINDING, NUM_FINDINGS
from cxrdet.synth.acquisition import quota, sample_acquisitions
from cxrdet.synth.annotate import consensus_rows, reader_rows
from cxrdet.synth.dataset import render_image
from cxrdet.synth.lesions import mask_box, render_lesion
from cxrdet.synth.phantom import render_anatomy, sample_anatomy
from cxrdet.synth.plan import plan_split
from label_fixtures import class_coverage


def test_quota_counts_are_proportional_and_cover_every_option():
    rng = np.random.default_rng(0)
    got = quota(rng, 10, {"a": 0.7, "b": 0.2, "c": 0.1})
    assert sorted(got) == ["a"] * 7 + ["b"] * 2 + ["c"]
    got = quota(rng, 4, {"a": 0.97, "b": 0.01, "c": 0.01, "d": 0.01})
    assert sorted(got) == ["a", "b", "c", "d"]  # rare options still appear once


def test_normal_fraction_class_mix_and_age_signal():
    specs = plan_split(0, "train", 300, 0.667, 0.25)
    normal = np.array([s.normal for s in specs])
    assert abs(normal.mean() - 0.667) < 0.01
    abnormal = [s.findings for s in specs if not s.normal]
    assert all(1 <= len(f) <= 4 and len(set(f)) == len(f) for f in abnormal)
    counts = class_coverage(specs)
    assert counts.min() >= 3  # even Pneumothorax and Atelectasis show up
    by = {name: counts[i] for name, i in NAME_TO_ID.items() if i < NUM_FINDINGS}
    assert by["Aortic enlargement"] > by["Cardiomegaly"] > by["Pleural effusion"] > by["Pneumothorax"]
    ages = np.array([s.age for s in specs], dtype=float)
    ages[ages == 0] = np.nan  # missing PatientAge
    assert np.nanmean(ages[~normal]) - np.nanmean(ages[normal]) > 8


def test_plan_depends_on_seed_only():
    a = plan_split(5, "test", 20, 0.5, 0.1)
    b = plan_split(5, "test", 20, 0.5, 0.1)
    c = plan_split(6, "test", 20, 0.5, 0.1)
    assert a == b
    assert [s.image_id for s in a] != [s.image_id for s in c]


def test_acquisition_mix_is_realistic():
    acqs = sample_acquisitions(np.random.default_rng(1), 400, 1.0)
    rows = np.array([a.rows for a in acqs])
    cols = np.array([a.cols for a in acqs])
    assert rows.min() >= 927 and rows.max() <= 3408 and cols.min() >= 823 and cols.max() <= 3320
    assert 2600 < np.median(rows) < 3000 and 2100 < np.median(cols) < 2600
    assert 0.05 < np.mean(rows == cols) < 0.25
    assert sum(a.window is not None and len(a.window[0]) > 1 for a in acqs) > 40
    assert sum(a.voi_lut for a in acqs) > 10
    assert sum(a.rescale != (1.0, 0.0) for a in acqs) > 60
    assert {a.manufacturer for a in acqs} >= {"FUJIFILM Corporation", "GE Healthcare"}
    small = sample_acquisitions(np.random.default_rng(1), 10, 0.25)
    assert max(max(a.rows, a.cols) for a in small) < 900


def _truth(rng, n):
    boxes = []
    for _ in range(n):
        x, y = rng.uniform(50, 400, 2)
        boxes.append([x, y, x + rng.uniform(20, 150), y + rng.uniform(20, 150)])
    return np.array(boxes), rng.integers(0, NUM_FINDINGS, n)


def test_readers_jitter_miss_rarely_add_and_stay_fusable():
    rng = np.random.default_rng(3)
    hw = (600, 500)
    misses = extras = total = 0
    for k in range(400):
        boxes, classes = _truth(rng, 1 + k % 3)
        rows = reader_rows(f"img{k}", boxes, classes, hw, rng)
        assert len({r["rad_id"] for r in rows}) == 3
        marks = [r for r in rows if r["class_id"] != str(NO_FINDING)]
        got = np.array([[float(r[c]) for c in ("x_min", "y_min", "x_max", "y_max")] for r in marks])
        assert (got[:, 0] < got[:, 2]).all() and got[:, 2].max() <= hw[1] and got[:, 3].max() <= hw[0]
        iou = iou_matrix(boxes, got)
        for i in range(len(boxes)):  # 2 or 3 readers' boxes of each finding overlap it well
            hits = {marks[j]["rad_id"] for j in np.flatnonzero(iou[i] > 0.6)
                    if int(marks[j]["class_id"]) == classes[i]}
            assert len(hits) >= 2
            misses += 3 - len(hits)
        total += 3 * len(boxes)
        extras += int((iou.max(axis=0) < 0.3).sum())
    assert 0.15 <= misses / total <= 0.25
    assert 0 < extras < 0.06 * 1200


def test_reader_that_sees_nothing_writes_no_finding_row():
    rows = reader_rows("n", np.zeros((0, 4)), np.zeros(0, int), (100, 100), np.random.default_rng(0))
    assert [(r["class_id"], r["x_min"]) for r in rows] == [(str(NO_FINDING), "")] * 3
    assert consensus_rows("n", np.zeros((0, 4)), np.zeros(0, int))[0]["rad_id"] == "consensus"


def test_mask_box_is_the_extent_in_continuous_pixels():
    m = np.zeros((10, 12))
    m[2:5, 3:9] = 1
    np.testing.assert_array_equal(mask_box(m), [3, 2, 9, 5])
    assert mask_box(np.zeros((4, 4))) is None


@pytest.fixture(scope="module")
def chests():
    out = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        anat = sample_anatomy(rng, (420, 350), 55, "MF"[seed % 2])
        render_anatomy(anat, rng)
        out.append(anat)
    return out


def _centre_frac(box, hw):
    return (box[0] + box[2]) / 2 / hw[1], (box[1] + box[3]) / 2 / hw[0]


def test_lesions_sit_where_the_class_says(chests):
    for i, anat in enumerate(chests):
        rng = np.random.default_rng(100 + i)
        h, w = anat.hw
        box = {c: render_lesion(NAME_TO_ID[c], anat, rng).box
               for c in ("Cardiomegaly", "Nodule/Mass", "Aortic enlargement", "Pleural effusion",
                         "Pleural thickening", "Pneumothorax", "Calcification")}
        cx, cy = _centre_frac(box["Cardiomegaly"], anat.hw)
        x0, y0, x1, y1 = box["Cardiomegaly"]
        area = (x1 - x0) * (y1 - y0)
        assert 0.4 < cx < 0.7 and 0.5 < cy < 0.8 and area > 0.06 * h * w
        assert box["Nodule/Mass"][2] - box["Nodule/Mass"][0] < 0.12 * w
        assert box["Calcification"][2] - box["Calcification"][0] < 0.12 * w
        cx, cy = _centre_frac(box["Aortic enlargement"], anat.hw)
        assert 0.5 < cx < 0.7 and cy < 0.45  # aortic knob: upper mediastinum, image right
        assert box["Pleural effusion"][3] > 0.6 * h  # at the costophrenic angle
        cx, _ = _centre_frac(box["Pleural thickening"], anat.hw)
        assert cx < 0.3 or cx > 0.7  # lateral pleura
        assert box["Pneumothorax"][1] < 0.3 * h  # reaches the apex


@pytest.mark.parametrize("class_id", range(NUM_FINDINGS))
def test_each_lesion_is_visible_at_256_px(class_id):
    spec = next(s for s in plan_split(11, "train", 6, 0.0, 0.25))
    spec = dataclasses.replace(spec, findings=(class_id,))
    with_lesion, without = render_image(spec), render_image(spec, with_lesions=False)
    assert len(without.boxes) == 0 and with_lesion.class_ids.tolist() == [class_id]
    hw = with_lesion.image.shape
    small_hw = resized_hw(hw, 256)
    a, b = (cv2.resize(x.image, small_hw[::-1], interpolation=cv2.INTER_AREA) for x in (with_lesion, without))
    x0, y0, x1, y1 = np.round(scale_boxes(with_lesion.boxes, hw, small_hw)[0]).astype(int)
    diff = np.abs(a[y0:y1, x0:x1] - b[y0:y1, x0:x1]).mean()
    assert diff > 0.02, f"class {class_id}: mean change {diff:.4f} inside its box at 256 px"
    outside = np.abs(a - b).sum() - np.abs(a[y0:y1, x0:x1] - b[y0:y1, x0:x1]).sum()
    assert outside < 0.05 * np.abs(a - b).sum()  # the box holds the lesion
