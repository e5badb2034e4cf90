"""Gate rules (low/high thresholds: see cxrdet/gate/rules.py) at the exact thresholds, and threshold tuning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cxrdet.detections import Detections, detections_to_frame, normal_detection
from cxrdet.gate.rules import apply_gate, tune_thresholds
from label_fixtures import labels_frame
from cxrdet.metrics import evaluate_detections

BOX = [10.0, 10.0, 50.0, 50.0]


def findings(score=0.9, with_14=False):
    d = Detections([BOX, [60, 60, 90, 90]], [score, 0.4], [0, 5])
    return Detections.concat([d, normal_detection(0.77)]) if with_14 else d


def as_rows(d):
    return sorted(zip(d.class_ids.tolist(), np.round(d.scores, 12).tolist(), map(tuple, d.boxes.tolist())))


@pytest.mark.parametrize("p, expected", [
    (0.0799999, "normal"),
    (0.08, "both"),  # low itself keeps the findings
    (0.5, "both"),
    (0.9499999, "both"),
    (0.95, "findings"),  # high itself drops the class-14 row
    (1.0, "findings"),
])
def test_apply_gate_branches_at_thresholds(p, expected):
    out = apply_gate(findings(with_14=True), p, low=0.08, high=0.95)
    f = findings()
    want = {
        "normal": normal_detection(1.0),
        "both": Detections.concat([f, normal_detection(1.0 - p)]),
        "findings": f,
    }[expected]
    assert as_rows(out) == as_rows(want)
    assert (out.class_ids == 14).sum() == (0 if expected == "findings" else 1)  # detector's 14 replaced


def test_normal_row_is_the_competition_box():
    out = apply_gate(Detections.empty(), 0.01)
    np.testing.assert_array_equal(out.boxes, [[0, 0, 1, 1]])
    assert out.scores.tolist() == [1.0] and out.class_ids.tolist() == [14]


@pytest.mark.parametrize("p, low, high", [(0.5, 0.9, 0.1), (0.5, 0.5, 0.5), (float("nan"), 0.1, 0.9), (1.2, 0.1, 0.9)])
def test_apply_gate_rejects_bad_inputs(p, low, high):
    with pytest.raises(ValueError):
        apply_gate(Detections.empty(), p, low, high)


def tuning_case():
    gt = labels_frame([
        dict(image_id="a1", class_id=0, x_min=10, y_min=10, x_max=50, y_max=50),
        dict(image_id="a2", class_id=0, x_min=10, y_min=10, x_max=50, y_max=50),
        dict(image_id="n1", class_id=14), dict(image_id="n2", class_id=14), dict(image_id="n3", class_id=14),
    ])
    one = lambda s: Detections([BOX], [s], [0])  # noqa: E731
    dets = {"a1": one(0.9), "a2": one(0.9), "n1": one(0.95), "n2": Detections.empty(), "n3": Detections.empty()}
    p = {"n1": 0.05, "a1": 0.2, "n2": 0.6, "a2": 0.9, "n3": 0.95}
    return gt, dets, p


def test_tuning_picks_the_known_best_pair():
    # low must drop n1's false finding (p 0.05) but keep a1's true one (p 0.2): only 0.1 does.
    # high must keep class-14 rows for n2 (0.6) and n3 (0.95): 1.01. AP_0 = 1; AP_14 = 1/3 +
    # 2/9 + 1/5 (n1 1.0 TP, a1 0.8 FP, n2 0.4 TP, a2 0.1 FP, n3 0.05 TP).
    gt, dets, p = tuning_case()
    low, high, table = tune_thresholds(dets, p, gt, lows=(0.0, 0.1, 0.3), highs=(0.5, 0.8, 1.01))
    assert (low, high) == (0.1, 1.01)
    assert table["map"].iat[0] == pytest.approx((1 + 1 / 3 + 2 / 9 + 1 / 5) / 2)
    assert len(table) == 9 and table["map"].is_monotonic_decreasing
    assert table["map"].iat[1] < table["map"].iat[0]


def test_tuning_table_equals_metric_on_gated_predictions():
    gt, dets, p = tuning_case()
    _, _, table = tune_thresholds(dets, p, gt, lows=(0.0, 0.1, 0.3, 0.7), highs=(0.5, 0.8, 0.92, 1.01))
    assert len(table) == 4 * 4 - 1  # (0.7, 0.5) has low >= high: skipped
    for row in table.itertuples():
        gated = {k: apply_gate(d, p[k], row.low, row.high) for k, d in dets.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = evaluate_detections(gt, detections_to_frame(gated))
        assert row.map == pytest.approx(want.map, abs=1e-12)
        assert row.ap_14 == pytest.approx(want.per_class[14], abs=1e-12)


def test_tuning_needs_every_probability():
    gt, dets, p = tuning_case()
    del p["n3"]
    with pytest.raises(ValueError, match="missing for 1 image"):
        tune_thresholds(dets, p, gt)
