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
from cxrdet.gate.rescore import FINDING_COLUMNS, rescore

from test_gate_cli import FAST, N, _provenance, data, train_gate  # noqa: F401 (the module fixture)

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
    gate = load_gate(out)
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
