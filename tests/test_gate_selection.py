"""Gate threshold selection: tuned thresholds replace the defaults only on a held-out gain beyond noise."""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from cxrdet.detections import Detections, detections_to_frame
from cxrdet.gate.model import GateClassifier
from cxrdet.gate.rules import GatedScorer, apply_gate, tune_thresholds
from cxrdet.gate.selection import MIN_ABNORMAL, MIN_IMAGES, paired_bootstrap, select_thresholds
from cxrdet.gate.train import choose_thresholds
from cxrdet.metrics import evaluate_detections
from label_fixtures import labels_frame

BOX = dict(x_min=100, y_min=100, x_max=300, y_max=300)


def case(n: int, n_abnormal: int, informative: bool, seed: int = 0):
    """Labels, findings and P(abnormal) for n images, the first n_abnormal abnormal (one class-0 box).

    Every image gets one class-0 finding, a true box on abnormal images, a false one on normal
    images. With ``informative`` the false ones score higher (0.9 vs 0.5) and P(abnormal)
    separates the images around 0.3 (normal 0.1-0.25, abnormal 0.4-0.9), which the default low
    0.08 wastes and the grid's 0.3 uses. Otherwise scores and P(abnormal) are noise in 0.1-0.9,
    where the defaults change nothing and any other pair drops random images: no real gain.
    """
    rng = np.random.default_rng(seed)
    rows, dets, p = [], {}, {}
    for k in range(n):
        i, ab = f"im{k:04d}", k < n_abnormal
        rows.append(dict(image_id=i, class_id=0, **BOX) if ab else dict(image_id=i, class_id=14))
        score = (0.5 if ab else 0.9) if informative else float(rng.uniform(0.1, 0.9))
        dets[i] = Detections([[100, 100, 300, 300] if ab else [500, 500, 700, 700]], [score], [0])
        if informative:
            p[i] = float(rng.uniform(0.4, 0.9) if ab else rng.uniform(0.1, 0.25))
        else:
            p[i] = float(rng.uniform(0.1, 0.9))
    return labels_frame(rows), dets, p


def test_gated_scorer_weights_equal_the_metric_on_duplicated_images():
    gt, dets, p = case(30, 12, informative=False, seed=4)
    w = np.random.default_rng(0).integers(0, 3, 30)
    ids = list(pd.unique(gt["image_id"]))
    # the same resample built by hand: copy j of image i is a distinct image "i#j"
    dup_gt = pd.concat([gt[gt["image_id"] == i].assign(image_id=f"{i}#{j}") for i, c in zip(ids, w) for j in range(c)])
    gated = {f"{i}#{j}": apply_gate(dets[i], p[i], 0.15, 0.7) for i, c in zip(ids, w) for j in range(c)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = evaluate_detections(dup_gt, detections_to_frame(gated))
    got = GatedScorer(dets, p, gt).score(0.15, 0.7, weights=w)
    assert got["map"] == pytest.approx(want.map, abs=1e-12)
    assert got["map_no14"] == pytest.approx(want.map_no14, abs=1e-12)


def test_too_few_oof_images_keep_the_defaults_without_tuning():
    gt, dets, p = case(MIN_IMAGES - 1, 100, informative=True)
    sel = select_thresholds(dets, p, gt)
    assert (sel["decision"], sel["low"], sel["high"]) == ("defaults", 0.08, 0.95)
    assert "too few" in sel["reason"] and "gain" not in sel and sel["n_images"] == MIN_IMAGES - 1
    gt, dets, p = case(400, MIN_ABNORMAL - 1, informative=True)  # enough images, too few abnormal
    sel = select_thresholds(dets, p, gt)
    assert sel["decision"] == "defaults" and sel["n_abnormal"] == MIN_ABNORMAL - 1 and "too few" in sel["reason"]


def test_a_large_clear_gain_adopts_the_tuned_pair():
    gt, dets, p = case(240, 100, informative=True)
    sel = select_thresholds(dets, p, gt, n_bootstrap=300)
    assert sel["decision"] == "tuned"
    assert sel["low"] == 0.3 and sel["high"] == sel["tuned"]["high"]  # 0.3 drops every false finding
    assert (sel["n_select"], sel["n_test"], sel["n_test_abnormal"]) == (120, 120, 50)
    g = sel["gain"]
    assert g["ci95"][0] > 0 and g["ci95"][0] <= g["map"] <= g["ci95"][1]
    # class 0 goes from AP 0.5-ish (false boxes ranked first) to 1 on the held-out half
    assert g["map_no14"] > 0.3 and "excludes 0" in sel["reason"]


def test_noise_that_looks_like_a_gain_in_sample_keeps_the_defaults():
    gt, dets, p = case(300, 120, informative=False, seed=3)
    low, high, table = tune_thresholds(dets, p, gt)
    default = table[(table["low"] == 0.08) & (table["high"] == 0.95)]["map"].iat[0]
    assert (low, high) != (0.08, 0.95) and table["map"].iat[0] > default  # the old rule would move
    sel = select_thresholds(dets, p, gt, n_bootstrap=300)
    assert sel["decision"] == "defaults" and (sel["low"], sel["high"]) == (0.08, 0.95)
    assert sel["gain"]["ci95"][0] <= 0 and "includes 0" in sel["reason"]


def test_paired_bootstrap_of_a_pair_against_itself_is_exactly_zero():
    gt, dets, p = case(50, 20, informative=False)
    g = paired_bootstrap(GatedScorer(dets, p, gt), (0.1, 0.9), (0.1, 0.9), n_bootstrap=50)
    assert g["map"] == 0 and g["ci95"] == [0.0, 0.0] and g["se"] == 0


@pytest.mark.parametrize("informative, decision", [(True, "tuned"), (False, "defaults")])
def test_the_schema_stores_the_chosen_thresholds_and_their_source(tmp_path, informative, decision):
    gt, dets, p = case(240, 100, informative=informative)
    X = pd.DataFrame({"meta_x": np.arange(40.0)})
    gate = GateClassifier(n_estimators=5, early_stopping_rounds=2, n_folds=2, n_jobs=1).fit(X, np.arange(40) % 2)
    args = argparse.Namespace(seed=0, low=None, high=None)
    info = choose_thresholds(args, gate, dets, pd.Series(p), gt)
    assert info["selection"]["decision"] == decision
    gate.save(tmp_path)
    saved = json.loads((tmp_path / "gate_schema.json").read_text())["thresholds"]
    assert (saved["low"], saved["high"]) == (info["selection"]["low"], info["selection"]["high"])
    assert saved["source"].startswith("tuned" if informative else "the standard defaults, kept")
    assert GateClassifier.load(tmp_path).threshold_source_ == saved["source"]
