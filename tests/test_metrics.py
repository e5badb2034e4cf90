"""mAP@0.4: hand-computed golden values and a naive reference loop."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from cxrdet.detections import DET_COLUMNS, Detections
from label_fixtures import labels_frame
from cxrdet.metrics import (
    MetricWarning, average_precision, detections_to_frame, evaluate_detections,
)


def gt_box(image_id, class_id, box):
    return dict(image_id=image_id, class_id=class_id, x_min=box[0], y_min=box[1], x_max=box[2], y_max=box[3])


def dets(rows):
    """rows: (image_id, class_id, score, x0, y0, x1, y1)."""
    return pd.DataFrame(rows, columns=DET_COLUMNS)


def score(gt_rows, det_rows, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        return evaluate_detections(labels_frame(gt_rows), dets(det_rows), **kw)


BOX = (0, 0, 10, 10)


def test_perfect_predictions_score_one():
    gt = [gt_box("a", 0, BOX), gt_box("a", 3, (20, 20, 40, 50)), {"image_id": "b", "class_id": 14}]
    r = score(gt, [("a", 0, 0.9, *BOX), ("a", 3, 0.3, 20, 20, 40, 50), ("b", 14, 0.5, 0, 0, 1, 1)])
    assert r.map == 1.0 and r.map_no14 == 1.0
    assert r.per_class[0] == r.per_class[3] == r.per_class[14] == 1.0
    assert math.isnan(r.per_class[1])
    assert r.n_images == 2


def test_empty_predictions_score_zero_and_warn():
    gt = [gt_box("a", 0, BOX), {"image_id": "b", "class_id": 14}]
    with pytest.warns(MetricWarning, match="2 ground-truth image"):
        r = evaluate_detections(labels_frame(gt), dets([]))
    assert r.map == 0.0 and r.per_class[0] == 0.0 and r.per_class[14] == 0.0
    assert any("no prediction row" in w for w in r.warnings)


def test_golden_duplicate_false_positive_and_missed_box():
    # a has 2 boxes, b has 1. Ranked: TP, duplicate FP, FP, TP; one box never found.
    # precision 1, 1/2, 1/3, 1/2 at recall 1/3, 1/3, 1/3, 2/3 -> AP = 1/3 * 1 + 1/3 * 1/2 = 0.5
    gt = [gt_box("a", 0, BOX), gt_box("a", 0, (50, 50, 60, 60)), gt_box("b", 0, BOX)]
    det = [("a", 0, 0.9, *BOX), ("a", 0, 0.8, 0, 0, 10, 9), ("b", 0, 0.7, 80, 80, 90, 90),
           ("b", 0, 0.6, 1, 0, 10, 10)]
    r = score(gt, det)
    assert r.per_class[0] == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_allclose(r.precision[0], [1, 1 / 2, 1 / 3, 1 / 2])
    np.testing.assert_allclose(r.recall[0], [1 / 3, 1 / 3, 1 / 3, 2 / 3])
    assert r.n_gt[0] == 3 and r.n_det[0] == 4


def test_order_of_input_does_not_matter_when_scores_differ():
    gt = [gt_box("a", 0, BOX), gt_box("b", 0, BOX)]
    det = [("a", 0, 0.2, *BOX), ("b", 0, 0.9, 50, 50, 60, 60), ("b", 0, 0.5, *BOX)]
    # ranked: FP(0.9), TP(0.5), TP(0.2): precision 0, 1/2, 2/3 -> AP = 0.5*0.5... envelope 2/3
    r1, r2 = score(gt, det), score(gt, det[::-1])
    assert r1.per_class[0] == r2.per_class[0] == pytest.approx(2 / 3)


def test_confidence_ties_keep_input_order():
    gt = [gt_box("a", 0, BOX)]
    fp, tp = ("a", 0, 0.5, 50, 50, 60, 60), ("a", 0, 0.5, *BOX)
    assert score(gt, [fp, tp]).per_class[0] == pytest.approx(0.5)
    assert score(gt, [tp, fp]).per_class[0] == 1.0


def test_iou_exactly_04_is_not_a_match():
    gt = [gt_box("a", 0, BOX)]
    assert score(gt, [("a", 0, 0.9, 0, 0, 4, 10)]).per_class[0] == 0.0  # IoU 40/100 == 0.4
    assert score(gt, [("a", 0, 0.9, 0, 0, 4.001, 10)]).per_class[0] == 1.0
    assert score(gt, [("a", 0, 0.9, 0, 0, 4, 10)], iou_thr=0.39).per_class[0] == 1.0


def test_class_without_detections_counts_zero_and_class_without_gt_is_excluded():
    gt = [gt_box("a", 0, BOX), gt_box("a", 5, BOX)]
    r = score(gt, [("a", 0, 0.9, *BOX), ("a", 7, 0.9, *BOX)])
    assert r.per_class[0] == 1.0 and r.per_class[5] == 0.0
    assert math.isnan(r.per_class[7]) and r.n_det[7] == 1
    assert r.map == pytest.approx(0.5) and r.map_no14 == pytest.approx(0.5)


def test_class_14_one_box_per_normal_image_and_literal_iou():
    # Three readers said "No finding" on n: still one ground-truth box [0,0,1,1].
    gt = [{"image_id": "n", "class_id": 14, "rad_id": f"R{i}"} for i in range(3)]
    gt += [gt_box("a", 0, BOX)]
    r = score(gt, [("a", 14, 0.95, 0, 0, 1, 1), ("n", 14, 0.9, 0, 0, 1, 1), ("a", 0, 0.5, *BOX)])
    assert r.n_gt[14] == 1
    assert r.per_class[14] == pytest.approx(0.5)  # FP on the abnormal image ranks first
    assert r.map == pytest.approx(0.75) and r.map_no14 == 1.0
    # A class-14 prediction with another box is scored literally: no overlap with [0,0,1,1].
    assert score(gt, [("n", 14, 0.9, 0, 0, 1000, 1000)]).per_class[14] == 0.0


def test_mixed_image_keeps_both_its_finding_and_its_class_14_box():
    # m: reader R1 said "No finding", R2 marked a finding. Labels are used as given (see
    # cxrdet/metrics.py), so m has a class-0 box AND a class-14 box; n is a plain normal image.
    gt = [{"image_id": "m", "class_id": 14, "rad_id": "R1"}, {**gt_box("m", 0, BOX), "rad_id": "R2"},
          {"image_id": "n", "class_id": 14, "rad_id": "R1"}]
    both = [("m", 14, 0.8, 0, 0, 1, 1), ("m", 0, 0.7, *BOX), ("n", 14, 0.6, 0, 0, 1, 1)]
    r = score(gt, both)
    assert r.n_gt[14] == 2 and r.n_gt[0] == 1
    assert r.per_class[14] == 1.0 and r.per_class[0] == 1.0 and r.map == 1.0
    # no class-14 call on m: that box is missed (recall stops at 1/2), not ignored
    r = score(gt, [d for d in both if d[:2] != ("m", 14)])
    assert r.per_class[14] == pytest.approx(0.5) and r.map == pytest.approx(0.75)


def test_unmatched_rule_versus_voc_rule():
    # Overlapping boxes of one class: the second detection's best box is taken.
    gt = [gt_box("a", 0, BOX), gt_box("a", 0, (2, 0, 12, 10))]
    det = [("a", 0, 0.9, *BOX), ("a", 0, 0.8, 0.5, 0, 10.5, 10)]
    assert score(gt, det).per_class[0] == 1.0  # the default rule: best UNMATCHED box
    assert score(gt, det, match="voc").per_class[0] == pytest.approx(0.5)  # VOC devkit


def test_predictions_for_unknown_images_are_ignored_with_warning():
    gt = [gt_box("a", 0, BOX)]
    with pytest.warns(MetricWarning, match="absent from the ground truth"):
        r = evaluate_detections(labels_frame(gt), dets([("a", 0, 0.5, *BOX), ("zz", 0, 0.99, *BOX)]))
    assert r.per_class[0] == 1.0


def test_empty_prediction_string_counts_as_a_row():
    gt = [gt_box("a", 0, BOX), gt_box("b", 0, BOX)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetricWarning)  # b had a row: no warning
        r = evaluate_detections(labels_frame(gt), dets([("a", 0, 0.5, *BOX)]), pred_image_ids=["a", "b"])
    assert r.per_class[0] == pytest.approx(0.5)


def test_to_json_shape_and_nan_as_null():
    r = score([gt_box("a", 0, BOX)], [("a", 0, 0.5, *BOX)])
    j = json.loads(json.dumps(r.to_json()))
    assert set(j) >= {"map", "map_no14", "per_class", "n_images"}
    assert list(j["per_class"]) == [str(c) for c in range(15)]
    assert j["per_class"]["0"] == 1.0 and j["per_class"]["1"] is None and j["n_images"] == 1


def test_detections_to_frame_roundtrip():
    d = {"a": Detections([[0, 0, 2, 2]], [0.5], [3]), "b": Detections.empty()}
    f = detections_to_frame(d)
    assert list(f.columns) == DET_COLUMNS and len(f) == 1 and f["class_id"].iat[0] == 3


def test_average_precision_envelope():
    ap, p, r = average_precision(np.array([0, 1, 1, 0, 1]), 4)
    # precision 0, 1/2, 2/3, 1/2, 3/5 at recall 0, 1/4, 1/2, 1/2, 3/4
    assert ap == pytest.approx(0.25 * 2 / 3 + 0.25 * 2 / 3 + 0.25 * 3 / 5)


# --- property test against a naive loop ------------------------------------------------------

def naive_map(gt_rows, det_rows, thr=0.4, match="unmatched"):
    gts = {}
    for g in gt_rows:
        key = (g["image_id"], g["class_id"])
        box = (0, 0, 1, 1) if g["class_id"] == 14 else (g["x_min"], g["y_min"], g["x_max"], g["y_max"])
        if g["class_id"] == 14 and key in gts:
            continue
        gts.setdefault(key, []).append(box)
    aps = {}
    for c in range(15):
        n_gt = sum(len(v) for (i, cc), v in gts.items() if cc == c)
        ds = sorted([d for d in det_rows if d[1] == c], key=lambda d: -d[2])  # stable
        used = {k: [False] * len(v) for k, v in gts.items()}
        flags = []
        for d in ds:
            cands = gts.get((d[0], c), [])
            ious = [iou(d[3:], g) for g in cands]
            best, best_j = -1.0, -1
            for j, v in enumerate(ious):
                if match == "unmatched" and used[(d[0], c)][j]:
                    continue
                if v > best:
                    best, best_j = v, j
            ok = best > thr and not used[(d[0], c)][best_j] if best_j >= 0 else False
            if ok:
                used[(d[0], c)][best_j] = True
            flags.append(ok)
        if n_gt == 0:
            continue
        tp = fp = 0
        prec, rec = [], []
        for f in flags:
            tp, fp = tp + f, fp + (not f)
            prec.append(tp / (tp + fp))
            rec.append(tp / n_gt)
        mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        aps[c] = sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1))
    return aps


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def random_case(rng):
    gt_rows, det_rows = [], []
    for i in range(int(rng.integers(1, 6))):
        image = f"im{i}"
        if rng.random() < 0.35:
            gt_rows.append({"image_id": image, "class_id": 14})
        else:
            for _ in range(int(rng.integers(1, 5))):
                x, y = (int(v) for v in rng.integers(0, 12, 2))
                w, h = (int(v) for v in rng.integers(2, 8, 2))
                gt_rows.append(gt_box(image, int(rng.integers(0, 3)), (x, y, x + w, y + h)))
        for _ in range(int(rng.integers(0, 7))):
            c = int(rng.choice([0, 1, 2, 14]))
            x, y = (int(v) for v in rng.integers(0, 12, 2))
            w, h = (int(v) for v in rng.integers(2, 8, 2))
            box = (0, 0, 1, 1) if c == 14 else (x, y, x + w, y + h)
            det_rows.append((image, c, float(rng.choice([0.1, 0.3, 0.5, 0.7, 0.9])), *box))
    return gt_rows, det_rows


@pytest.mark.parametrize("match", ["unmatched", "voc"])
def test_matches_naive_loop_on_random_cases(match):
    rng = np.random.default_rng(1234)
    for _ in range(150):
        gt_rows, det_rows = random_case(rng)
        want = naive_map(gt_rows, det_rows, match=match)
        got = score(gt_rows, det_rows, match=match)
        for c in range(15):
            if c in want:
                assert got.per_class[c] == pytest.approx(want[c], abs=1e-12), (gt_rows, det_rows, c)
            else:
                assert math.isnan(got.per_class[c])
        if want:
            assert got.map == pytest.approx(np.mean(list(want.values())), abs=1e-12)
