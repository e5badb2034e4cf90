"""Gate features and GateClassifier: tiny in-memory fixtures, no files except save/load."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrdet.detections import Detections, detections_from_frame
from cxrdet.errors import UserError
from cxrdet.gate.features import (
    FeatureSchema,
    build_features,
    detector_feature_names,
    detector_features,
    feature_group,
)
from cxrdet.gate.model import SCHEMA_FILE, GateClassifier

# few, large steps and 3 folds: each fit stays far under a second on a busy 2-core machine
FAST = dict(n_estimators=80, learning_rate=0.15, early_stopping_rounds=10, n_folds=3, n_jobs=1)


def meta_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """META.csv-like rows as read from disk (strings, blanks for missing)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "image_id": [f"im{i:03d}" for i in range(n)],
        "rows": rng.integers(2000, 3000, n).astype(str),
        "columns": rng.integers(2000, 3000, n).astype(str),
        "photometric_interpretation": rng.choice(["MONOCHROME1", "MONOCHROME2"], n),
        "bits_stored": rng.choice(["12", "14"], n),
        "pixel_spacing_row": "0.15",
        "pixel_spacing_col": "0.15",
        "patient_age": rng.uniform(20, 80, n).round(1).astype(str),
        "patient_sex": rng.choice(["M", "F", ""], n),
        "modality": rng.choice(["DX", "CR"], n),
        "manufacturer": rng.choice(["GE", "Philips"], n),
    })


def separable(n: int = 150, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Abnormal = old or has a bright pixel mean: learnable from two features."""
    meta = meta_frame(n, seed)
    rng = np.random.default_rng(seed + 1)
    y = (rng.random(n) < 0.4).astype(int)
    meta["patient_age"] = np.where(y == 1, rng.normal(65, 6, n), rng.normal(40, 6, n)).round(1).astype(str)
    meta.loc[::10, "patient_age"] = ""
    px = pd.DataFrame({"image_id": meta["image_id"], "px_mean": 0.4 + 0.2 * y + rng.normal(0, 0.04, n)})
    return build_features(meta, px), y


@pytest.fixture(scope="module")
def saved_gate(tmp_path_factory):
    """One gate fitted and saved for the tests that only read it."""
    X, y = separable(100)
    gate = GateClassifier(**FAST).fit(X, y).set_thresholds(0.1, 0.9, "test")
    folder = tmp_path_factory.mktemp("gate")
    gate.save(folder, {"note": "round trip"})
    return X, y, gate, folder


# ------------------------------------------------------------------ features
def test_metadata_missing_stays_nan_and_strings_become_categories():
    meta = meta_frame(3)
    meta.loc[0, "patient_age"] = ""
    meta.loc[1, "rows"] = ""
    meta.loc[0, "patient_sex"] = "  "
    meta.loc[1, "photometric_interpretation"] = " monochrome2 "
    meta.loc[2, "manufacturer"] = "GE   Healthcare"
    X = build_features(meta)
    assert list(X.index) == ["im000", "im001", "im002"]
    assert np.isnan(X.loc["im000", "meta_age"])  # missing, not 0
    assert np.isnan(X.loc["im001", "meta_rows"])
    assert X.loc["im002", "meta_age"] == pytest.approx(float(meta.loc[2, "patient_age"]))
    assert pd.isna(X.loc["im000", "meta_sex"])
    assert X.loc["im001", "meta_photometric"] == "MONOCHROME2"
    assert X.loc["im002", "meta_manufacturer"] == "GE Healthcare"
    for name in ("meta_sex", "meta_photometric", "meta_manufacturer", "meta_modality"):
        assert isinstance(X[name].dtype, pd.CategoricalDtype)
    assert all(feature_group(c) == "metadata" for c in X.columns)


def test_metadata_refuses_missing_column_and_non_numbers():
    with pytest.raises(UserError, match="patient_age"):
        build_features(meta_frame(2).drop(columns=["patient_age"]))
    bad = meta_frame(2)
    bad.loc[1, "rows"] = "tall"
    with pytest.raises(UserError, match="'rows' must be numeric, found 'tall'"):
        build_features(bad)


def test_pixel_features_joined_by_id_and_gaps_refused():
    meta = meta_frame(3)
    px = pd.DataFrame({"image_id": ["im002", "im000", "im001"], "px_mean": [0.2, 0.0, 0.1], "other": [1, 2, 3]})
    X = build_features(meta, px)
    assert X["px_mean"].tolist() == [0.0, 0.1, 0.2]
    assert "other" not in X.columns  # only px_* columns are features
    with pytest.raises(UserError, match="lacks 1 of 3 images"):
        build_features(meta, px.iloc[:2])


def test_detector_evidence_on_a_hand_made_example():
    dets = {
        "a": Detections(np.zeros((5, 4)), [0.6, 0.3, 0.05, 0.35, 0.9], [0, 0, 0, 3, 14]),
        "b": Detections.empty(),
    }
    F = detector_features(dets, pd.Index(["a", "b", "c"]))
    assert list(F.columns) == detector_feature_names()
    a = F.loc["a"]
    assert a["det_max"] == 0.6  # the class-14 row (0.9) is ignored
    assert (a["det_n10"], a["det_n30"], a["det_n50"]) == (3, 3, 1)  # 0.3 counts at >= 0.3
    assert (a["det_max_c00"], a["det_n10_c00"], a["det_n30_c00"], a["det_n50_c00"]) == (0.6, 2, 2, 1)
    assert (a["det_max_c03"], a["det_n30_c03"], a["det_n50_c03"]) == (0.35, 1, 0)
    assert a["det_max_c05"] == 0 and a["det_n10_c13"] == 0
    assert (F.loc["b"] == 0).all()  # looked, found nothing
    assert F.loc["c"].isna().all()  # never looked: unknown


def test_live_scores_count_as_the_submission_csv_writes_them(tmp_path):
    # train-gate reads out-of-fold scores back from a CSV (4 decimals); infer/serve pass live ones
    from cxrdet.formats.submission import read_submission, write_submission

    live = {"a": Detections(np.array([[1.0, 2, 30, 40], [5, 5, 9, 9]]), [0.29996, 0.0999951], [2, 2])}
    path = tmp_path / "oof.csv"
    write_submission(path, live, ["a"])
    read = detections_from_frame(read_submission(path))
    assert read["a"].scores.tolist() == [0.3, 0.1]  # what the CSV holds
    F_live, F_read = (detector_features(d, pd.Index(["a"])) for d in (live, read))
    pd.testing.assert_frame_equal(F_live, F_read)
    assert (F_live.loc["a", "det_n30_c02"], F_live.loc["a", "det_n10_c02"], F_live.loc["a", "det_max"]) == (1, 2, 0.3)


def test_detections_from_frame_keeps_listed_empty_images():
    frame = pd.DataFrame({"image_id": ["x", "x"], "class_id": [2, 5], "score": [0.4, 0.7],
                          "x_min": [0, 1], "y_min": [0, 1], "x_max": [5, 6], "y_max": [5, 6]})
    dets = detections_from_frame(frame, ["x", "y"])
    assert len(dets["x"]) == 2 and len(dets["y"]) == 0
    assert dets["x"].class_ids.tolist() == [2, 5]


# ------------------------------------------------------------------ model
def test_fit_returns_self_and_sets_learned_attributes(saved_gate):
    X, y, fitted, _ = saved_gate
    gate = GateClassifier(**FAST)
    assert set(vars(gate)) == set(gate.get_params())  # __init__ stores params only
    assert not hasattr(gate, "booster_")
    assert gate.fit(X, y) is gate
    np.testing.assert_array_equal(gate.oof_proba_, fitted.oof_proba_)  # seeded: reproducible
    assert gate.feature_names_ == list(X.columns)
    assert gate.categories_["meta_sex"] == ["F", "M"]
    assert gate.oof_proba_.shape == (100,) and np.isfinite(gate.oof_proba_).all()
    assert len(gate.fold_auc_) == gate.n_folds == len(gate.best_iterations_)
    assert gate.booster_.num_boosted_rounds() == gate.n_rounds_
    assert (gate.low_, gate.high_) == (0.08, 0.95)


def test_learns_a_separable_problem():
    X, y = separable(150, seed=0)
    gate = GateClassifier(**FAST).fit(X, y)
    assert gate.cv_auc_ > 0.9
    X_new, y_new = separable(120, seed=7)
    assert roc_auc_score(y_new, gate.p_abnormal(X_new)) > 0.9
    proba = gate.predict_proba(X_new)
    assert proba.shape == (120, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_save_load_round_trip_gives_identical_probabilities(saved_gate):
    X, _, gate, tmp_path = saved_gate
    assert {p.name for p in tmp_path.iterdir()} == {"gate.ubj", SCHEMA_FILE}
    loaded = GateClassifier.load(tmp_path)
    np.testing.assert_array_equal(loaded.p_abnormal(X), gate.p_abnormal(X))
    assert (loaded.low_, loaded.high_, loaded.threshold_source_) == (0.1, 0.9, "test")
    assert loaded.categories_ == gate.categories_ and loaded.n_rounds_ == gate.n_rounds_
    doc = json.loads((tmp_path / SCHEMA_FILE).read_text())
    assert doc["versions"]["xgboost"] and doc["training"]["note"] == "round trip"
    assert [f["name"] for f in doc["features"]] == list(X.columns)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda X: X.drop(columns=["px_mean"]), r"missing 1 feature\(s\) \['px_mean'\]"),
        (lambda X: X.assign(px_extra=1.0), r"1 unexpected feature\(s\) \['px_extra'\]"),
        (lambda X: X[list(X.columns[::-1])], "another order: position 0 expected 'meta_age', found 'px_mean'"),
        (lambda X: X.assign(meta_sex=1.0), "'meta_sex'.*expected category values, found dtype float64"),
    ],
)
def test_schema_mismatch_is_refused_with_expected_found_and_fix(saved_gate, change, message):
    X, _, _, tmp_path = saved_gate
    gate = GateClassifier.load(tmp_path)
    with pytest.raises(UserError, match=message) as err:
        gate.p_abnormal(change(X))
    assert str(tmp_path) in str(err.value) and "Fix:" in str(err.value)


def test_unseen_category_is_treated_as_missing_with_a_warning(saved_gate):
    X, _, gate, _ = saved_gate
    unseen = X.assign(meta_manufacturer=pd.Categorical(["Siemens"] * len(X)))
    missing = X.assign(meta_manufacturer=pd.Categorical([None] * len(X)))
    with pytest.warns(UserWarning, match="'Siemens'.*treated as missing"):
        p_unseen = gate.p_abnormal(unseen)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p_missing = gate.p_abnormal(missing)
    np.testing.assert_array_equal(p_unseen, p_missing)


def test_all_missing_category_column_trains_and_predicts():
    X, y = separable(60)
    X["meta_sex"] = pd.Categorical([None] * len(X))
    gate = GateClassifier(**FAST).fit(X, y)
    assert gate.categories_["meta_sex"] == []
    assert gate.p_abnormal(X).shape == (60,)


def test_load_refuses_incomplete_or_foreign_folders(tmp_path, saved_gate):
    with pytest.raises(UserError, match="lacks gate_schema.json"):
        GateClassifier.load(tmp_path)
    X, _, _, folder = saved_gate
    (tmp_path / "gate.ubj").write_bytes((folder / "gate.ubj").read_bytes())
    doc = json.loads((folder / SCHEMA_FILE).read_text())
    (tmp_path / SCHEMA_FILE).write_text(json.dumps({**doc, "format_version": 99}))
    with pytest.raises(UserError, match="schema version 99"):
        GateClassifier.load(tmp_path)


def test_given_folds_are_used_and_single_class_folds_refused():
    X, y = separable(80)
    folds = np.arange(80) % 4  # 4 folds although n_folds is 3: the given assignment wins
    gate = GateClassifier(**FAST).fit(X, y, folds)
    np.testing.assert_array_equal(gate.folds_, folds)
    assert len(gate.fold_auc_) == 4
    bad = np.where(y == 1, 0, 1)  # fold 0 holds out only abnormal images
    with pytest.raises(UserError, match="holds out only one class"):
        GateClassifier(**FAST).fit(X, y, bad)


def test_schema_json_round_trip_and_encoding_fixes_categories():
    X, _ = separable(20)
    schema = FeatureSchema.from_frame(X)
    again = FeatureSchema.from_json(json.loads(json.dumps(schema.to_json())))
    assert again == schema
    enc = again.encode(X.iloc[:3])
    assert list(enc["meta_sex"].cat.categories) == schema.categories["meta_sex"]


def test_fold_errors_name_the_values_and_no_cli_flag():
    X, y = separable(80)
    with pytest.raises(UserError) as e:
        GateClassifier(**{**FAST, "n_folds": 50}).fit(X, y)
    msg = str(e.value)
    assert "needs at least 50 normal and 50 abnormal images for 50-fold cross-validation, found [55, 25] (normal, abnormal)" in msg
    assert "n_folds=50" in msg and "--" not in msg
    with pytest.raises(UserError) as e:
        GateClassifier(**FAST).fit(X, y, np.where(y == 1, 0, 1))
    assert "fold 0 holds out only one class" in str(e.value) and "folds=None" in str(e.value)
    assert "--" not in str(e.value)
