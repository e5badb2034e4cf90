"""Classifier evidence in the gate (train-gate --classifier-probs), the gate refusing to run
without it, and box rescoring by the classifier (golden values; probability 1 changes nothing)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxrdet.classes import CLASS_NAMES
from cxrdet.detections import Detections
from cxrdet.errors import UserError
from cxrdet.formats.image_level import classifier_column
from cxrdet.formats.probabilities import write_probabilities
from cxrdet.formats.provenance import write_provenance
from cxrdet.inference.predictor import GateRuntime, PredictSettings, check_classifier_inputs, load_gate
from cxrdet.gate.model import SCHEMA_FILE
from cxrdet.gate.rescore import AUTO, FINDING_COLUMNS, compare_rescoring, rescore, resolve_rescore
from cxrdet.gate.selection import MIN_ABNORMAL, MIN_IMAGES

from test_gate_cli import FAST, N, _provenance, data, train_gate  # noqa: F401 (the module fixture)
from test_gate_selection import case

CLASSES = ["Cardiomegaly", "Nodule/Mass", "abnormal"]


def write_probs(data, path, by_fold: dict[int, list[str]]) -> None:
    """Probabilities that tell abnormal images apart, and a record: fold k's classifier predicted by_fold[k]."""
    folds = pd.read_csv(data / "FOLDS.csv", dtype={"image_id": str})
    rng = np.random.default_rng(0)
    rows = {}
    for i, image_id in enumerate(folds["image_id"]):
        ab = i % 3 == 0  # as in test_gate_cli's fixture
        p = rng.uniform(0.6, 0.95) if ab else rng.uniform(0.02, 0.3)
        rows[image_id] = np.array([p, rng.uniform(0, 0.2), p])
    write_probabilities(path, CLASSES, rows)
    write_provenance(path, [{"models": [{"artifact": f"/runs/c{k}/export", "folds": str(data / "FOLDS.csv"),
                                         "fold": k}], "folds": str(data / "FOLDS.csv"), "fold": k, "shard": None,
                             "tta": "none", "image_ids": ids} for k, ids in by_fold.items()])


def by_fold(data) -> dict[int, list[str]]:
    folds = pd.read_csv(data / "FOLDS.csv", dtype={"image_id": str})
    return {k: folds.loc[folds["fold"] == k, "image_id"].tolist() for k in range(4)}


def test_classifier_evidence_is_a_feature_group_of_the_schema_and_the_ablation(data, tmp_path):
    probs = tmp_path / "oof_probs.csv"
    write_probs(data, probs, by_fold(data))
    det = tmp_path / "oof.csv"
    det.write_bytes((data / "sub.csv").read_bytes())
    _provenance(det, by_fold(data), data / "FOLDS.csv")
    out = tmp_path / "gate"
    assert train_gate(data, out, "--folds", str(data / "FOLDS.csv"), "--detections", str(det),
                      "--classifier-probs", str(probs)) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["ablation_oof_auc"]) == ["metadata", "metadata+pixel", "metadata+pixel+detector",
                                                 "metadata+pixel+detector+classifier"]
    last = report["ablation_oof_auc"]["metadata+pixel+detector+classifier"]
    assert len(last["fold_auc"]) == 4 and "gated_map_tuned" in last
    assert report["n_features"]["classifier"] == 3
    rescoring = report["rescoring"]  # OOF mAP with and without rescoring, ungated and gated
    assert rescoring["n_images"] == N and rescoring["better"] in ("none", "classifier")
    # N images are too few to tell a gain from noise: the gate records none for --rescore auto
    assert N < MIN_IMAGES and rescoring["choice"] == "none" and "too few out-of-fold images" in rescoring["reason"]
    for key in ("ungated_none", "ungated_classifier", "gated_none", "gated_classifier"):
        assert 0 <= rescoring[key]["map"] <= 1, key
    # the fixture's abnormal images have one class-3 box; rescoring by p(Cardiomegaly) ranks them
    # above the normal ones' boxes as the detector already did: the ungated mAP cannot fall
    assert rescoring["ungated_classifier"]["map"] >= rescoring["ungated_none"]["map"] - 1e-9
    check = report["classifier_oof_check"]
    assert check["strict"] and check["n_images_checked"] == N and check["class_names"] == CLASSES
    schema = json.loads((out / "gate_schema.json").read_text())
    assert "classifier" in schema["training"]["feature_groups"]
    assert schema["training"]["classifier_oof_check"]["models"] == [f"/runs/c{k}/export" for k in range(4)]
    assert schema["rescore"] == {"choice": "none", "reason": rescoring["reason"]}
    gate = load_gate(out)
    assert gate.rescore == "none"
    assert gate.classifier_features == ("clf_Cardiomegaly", "clf_Nodule_Mass", "clf_abnormal")
    # inference: no classifier, or one predicting other classes, is refused before any image
    with pytest.raises(UserError, match="trained with classifier evidence.*--classifier RUN/export"):
        check_classifier_inputs(gate, PredictSettings(), None)
    with pytest.raises(UserError, match=r"clf_Nodule_Mass"):
        check_classifier_inputs(gate, PredictSettings(), ["clf_Cardiomegaly", "clf_abnormal"])
    check_classifier_inputs(gate, PredictSettings(), ["clf_Cardiomegaly", "clf_Nodule_Mass", "clf_abnormal", "x"])


def test_in_fold_or_unrecorded_classifier_evidence_is_refused(data, tmp_path, capsys):
    probs = tmp_path / "probs.csv"
    folds = pd.read_csv(data / "FOLDS.csv", dtype={"image_id": str})
    write_probs(data, probs, {0: folds["image_id"].tolist()})  # fold 0's classifier predicted everything
    assert train_gate(data, tmp_path / "g", "--classifier-probs", str(probs)) == 2
    err = capsys.readouterr().err
    first_in_fold = folds.loc[folds["fold"] != 0, "image_id"].iloc[0]
    assert "45 image(s) were predicted by classifier /runs/c0/export" in err and first_in_fold in err
    assert "cxrdet classify --model runs/cK/export --folds FOLDS.csv --fold K" in err and "Traceback" not in err
    probs.with_suffix(".provenance.json").unlink()
    assert train_gate(data, tmp_path / "g", "--classifier-probs", str(probs)) == 2
    assert "no provenance record probs.provenance.json" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_rescore_golden_and_probability_one_changes_nothing():
    det = Detections(np.array([[0, 0, 5, 5], [1, 1, 6, 6], [2, 2, 8, 8], [0, 0, 1, 1]], float),
                     np.array([0.8, 0.5, 0.4, 0.3]), np.array([3, 8, 0, 14]))
    row = {classifier_column(CLASS_NAMES[3]): 0.5, classifier_column(CLASS_NAMES[8]): 0.1, "clf_abnormal": 0.2}
    out = rescore(det, row)
    # class 3 x 0.5, class 8 x 0.1, class 0 has no column (kept), class 14 is the gate's (kept)
    assert out.scores.tolist() == pytest.approx([0.4, 0.05, 0.4, 0.3])
    assert np.array_equal(out.boxes, det.boxes) and np.array_equal(out.class_ids, det.class_ids)
    ones = rescore(det, {c: 1.0 for c in FINDING_COLUMNS})
    assert np.array_equal(ones.scores, det.scores)
    with pytest.raises(UserError, match="--rescore classifier"):
        check_classifier_inputs(None, PredictSettings(rescore="classifier"), None)
    with pytest.raises(ValueError):
        PredictSettings(rescore="bogus")


def rescoring_case(helpful: bool):
    """test_gate_selection's informative case: one class-0 box per image, true on abnormal images,
    false on normal ones. helpful: the false boxes outscore the true ones (0.9 vs 0.5) and the
    classifier knows which images hold class 0; else the detector ranks right (true 0.9, false
    0.5) and the classifier has it backwards."""
    gt, dets, p = case(MIN_IMAGES + 40, MIN_ABNORMAL + 30, informative=True)
    abnormal = set(gt.loc[gt["class_id"] == 0, "image_id"])
    if not helpful:
        dets = {i: Detections(d.boxes, 1.4 - d.scores, d.class_ids) for i, d in dets.items()}
    col = classifier_column(CLASS_NAMES[0])
    hi, lo = (0.9, 0.05) if helpful else (0.05, 0.9)
    clf = pd.DataFrame({col: [hi if i in abnormal else lo for i in dets]}, index=list(dets))
    return gt, dets, p, clf


@pytest.mark.parametrize("helpful", [True, False])
def test_rescoring_is_chosen_only_when_its_out_of_fold_gain_beats_its_uncertainty(helpful):
    gt, dets, p, clf = rescoring_case(helpful)
    r = compare_rescoring(dets, clf, p, gt, 0.08, 0.95, n_bootstrap=200)
    # true boxes 0.5 x 0.9 = 0.45 now outrank false ones 0.9 x 0.05: class 0's AP goes to 1
    gain = r["gated_classifier"]["map"] - r["gated_none"]["map"]
    assert r["gain"]["map"] == pytest.approx(gain)
    if helpful:
        assert gain > 0.05 and r["gain"]["ci95"][0] > 0 and r["choice"] == "classifier" == r["better"]
        assert "excludes 0; rescoring is adopted" in r["reason"]
    else:
        assert gain < 0 and r["better"] == "none" == r["choice"] and r["gain"]["ci95"][1] < 0


def test_rescoring_needs_enough_images_even_when_it_scores_better():
    gt, dets, p, clf = rescoring_case(helpful=True)
    few = list(dets)[:MIN_ABNORMAL] + list(dets)[-60:]  # 110 images: below MIN_IMAGES
    r = compare_rescoring({i: dets[i] for i in few}, clf, p, gt[gt["image_id"].isin(few)], 0.08, 0.95)
    assert r["better"] == "classifier" and r["choice"] == "none" and "gain" not in r
    assert f"at least {MIN_IMAGES}" in r["reason"]


def test_the_gates_rescore_choice_round_trips_and_auto_follows_it(tmp_path):
    from cxrdet.gate.model import GateClassifier

    X = pd.DataFrame({"meta_x": np.arange(40.0)})
    gate = GateClassifier(n_estimators=5, early_stopping_rounds=2, n_folds=2, n_jobs=1).fit(X, np.arange(40) % 2)
    gate.set_rescore("classifier", "measured")
    gate.save(tmp_path / "g")
    runtime = load_gate(tmp_path / "g")
    assert runtime.rescore == "classifier"
    assert resolve_rescore(AUTO, True, runtime.rescore) == "classifier"
    assert resolve_rescore(AUTO, False, runtime.rescore) == "none"  # no classifier loaded: nothing to rescore by
    assert resolve_rescore(AUTO, True, "none") == "none" and resolve_rescore("classifier", True, "none") == "classifier"
    doc = json.loads((tmp_path / "g" / SCHEMA_FILE).read_text())
    assert doc["rescore"] == {"choice": "classifier", "reason": "measured"}
    del doc["rescore"]  # a gate saved before the decision existed: auto keeps none
    (tmp_path / "g" / SCHEMA_FILE).write_text(json.dumps(doc))
    assert load_gate(tmp_path / "g").rescore == "none"
    doc["rescore"] = {"choice": "always"}
    (tmp_path / "g" / SCHEMA_FILE).write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"'rescore' must be an object whose 'choice' is one of"):
        load_gate(tmp_path / "g")
