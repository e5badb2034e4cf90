"""`cxrdet train-gate` end to end on tiny CSV fixtures written in tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxrdet.cli import main as cli
from cxrdet.errors import UserError
from cxrdet.gate.features import build_features
from cxrdet.gate.inputs import abnormal_targets, read_detections
from cxrdet.gate.model import GateClassifier
from cxrdet.gate.train import get_args_parser
from label_fixtures import labels_frame

FAST = ["--n-estimators", "60", "--lr", "0.15", "--early-stopping", "10", "--workers", "1",
        "--n-folds", "3"]
N = 60


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """META, pixel features, 3-reader labels, folds and a submission for N images.

    Abnormal images are older and brighter; the detector finds their box with a high score and
    puts a lower-scored box on normal images.
    """
    d = tmp_path_factory.mktemp("gate_data")
    rng = np.random.default_rng(3)
    ids = [f"img{i:03d}" for i in range(N)]
    ab = np.arange(N) % 3 == 0
    meta = pd.DataFrame({
        "image_id": ids, "rows": 2500, "columns": rng.integers(2000, 2600, N),
        "photometric_interpretation": rng.choice(["MONOCHROME1", "MONOCHROME2"], N), "bits_stored": 12,
        "pixel_spacing_row": 0.15, "pixel_spacing_col": 0.15,
        "patient_age": np.where(ab, rng.normal(65, 5, N), rng.normal(40, 5, N)).round(),
        "patient_sex": rng.choice(["M", "F"], N), "modality": "DX", "manufacturer": "GE",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1", "window_center": "", "window_width": "",
    })
    meta.loc[::7, "patient_age"] = np.nan
    meta.to_csv(d / "META.csv", index=False)
    px = pd.DataFrame({"image_id": ids, "px_mean": np.where(ab, 0.6, 0.4) + rng.normal(0, 0.05, N)})
    px.to_csv(d / "META_pixel_features.csv", index=False)
    rows, sub = [], []
    for i, a in zip(ids, ab):
        for r in ("R1", "R2", "R3"):
            box = dict(x_min=500, y_min=800, x_max=1500, y_max=1600) if a else {}
            rows.append(dict(image_id=i, class_id=3 if a else 14, rad_id=r, **box))
        score = rng.uniform(0.5, 0.9) if a else rng.uniform(0.05, 0.3)
        sub.append(f"{i},3 {score:.3f} 510 790 1490 1610")
    labels_frame(rows).to_csv(d / "train.csv", index=False)
    (d / "sub.csv").write_text("image_id,PredictionString\n" + "\n".join(sub) + "\n")
    pd.DataFrame({"image_id": ids, "fold": np.arange(N) % 4}).to_csv(d / "FOLDS.csv", index=False)
    return d


def train_gate(d, out, *extra) -> int:
    return cli(["train-gate", "--meta", str(d / "META.csv"), "--labels", str(d / "train.csv"),
                "--out", str(out), *FAST, *extra])


def test_train_gate_with_detections_writes_every_output(data, tmp_path):
    out = tmp_path / "gate"
    assert train_gate(data, out, "--folds", str(data / "FOLDS.csv"), "--detections", str(data / "sub.csv")) == 0
    expected = {"gate.ubj", "gate_schema.json", "report.json", "feature_importance.png", "oof_predictions.csv"}
    assert expected <= {p.name for p in out.iterdir()}
    assert (out / "feature_importance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert list(report["ablation_oof_auc"]) == ["metadata", "metadata+pixel", "metadata+pixel+detector"]
    assert all("gated_map_tuned" in r for r in report["ablation_oof_auc"].values())
    assert report["cv"]["oof_auc"] > 0.9 and len(report["cv"]["fold_auc"]) == 4  # FOLDS.csv wins over --n-folds
    assert report["thresholds"]["source"].startswith("tuned")
    tuning = report["threshold_tuning"]
    assert tuning["map_gated"] >= tuning["map_ungated"]  # class 14 alone adds AP on this data
    counts = report["confusion_oof"]["counts"]
    assert sum(counts["normal"].values()) == report["n_normal"] == 40
    gate = GateClassifier.load(out)
    assert (gate.low_, gate.high_) == (report["thresholds"]["low"], report["thresholds"]["high"])
    meta = pd.read_csv(data / "META.csv")
    X = build_features(meta, pd.read_csv(data / "META_pixel_features.csv"),
                       read_detections(data / "sub.csv", meta["image_id"].tolist()))
    p = gate.p_abnormal(X)
    assert p.shape == (N,) and roc_auc_score_ok(meta, p)


def roc_auc_score_ok(meta: pd.DataFrame, p: np.ndarray) -> bool:
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(np.arange(len(meta)) % 3 == 0, p) > 0.9


def test_train_gate_without_detections_keeps_default_thresholds(data, tmp_path):
    out = tmp_path / "gate"
    assert train_gate(data, out, "--no-pixel") == 0
    report = json.loads((out / "report.json").read_text())
    assert (report["thresholds"]["low"], report["thresholds"]["high"]) == (0.08, 0.95)
    assert "standard defaults" in report["thresholds"]["source"]
    assert list(report["ablation_oof_auc"]) == ["metadata"]
    assert all(n.startswith("meta_") for n in GateClassifier.load(out).feature_names_)


@pytest.mark.parametrize("breakage, message", [
    ("labels_without_meta", "have no row in"),
    ("meta_missing_column", "missing column(s) ['patient_sex']"),
    ("no_pixel_file", "pixel features file not found"),
])
def test_bad_input_exits_2_with_a_message_naming_the_file(data, tmp_path, capsys, breakage, message):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("META.csv", "META_pixel_features.csv", "train.csv"):
        (d / name).write_bytes((data / name).read_bytes())
    meta = pd.read_csv(d / "META.csv")
    if breakage == "labels_without_meta":
        meta.iloc[1:].to_csv(d / "META.csv", index=False)
    elif breakage == "meta_missing_column":
        meta.drop(columns=["patient_sex"]).to_csv(d / "META.csv", index=False)
    else:
        (d / "META_pixel_features.csv").unlink()
    assert train_gate(d, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert str(d) in err
    if breakage == "no_pixel_file":  # the library names the file; the command adds its flags
        assert "(--pixel-features PATH, or --no-pixel)" in err


def test_in_fold_detections_are_refused(data, tmp_path, capsys):
    run = tmp_path / "run_fold0"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"folds": str(data / "FOLDS.csv"), "fold": 0}))
    args = ["--detections", str(data / "sub.csv"), "--detector-run", str(run)]
    assert train_gate(data, tmp_path / "out", *args) == 2
    assert "in-fold" in capsys.readouterr().err
    runs = []
    for k in (1, 2, 3):  # with every fold's run given, every image was held out by one of them
        r = tmp_path / f"run_fold{k}"
        r.mkdir()
        (r / "config.json").write_text(json.dumps({"folds": str(data / "FOLDS.csv"), "fold": k}))
        runs += ["--detector-run", str(r)]
    assert train_gate(data, tmp_path / "out", *args, *runs, "--no-ablation") == 0
    assert "not known which run predicted which image" in capsys.readouterr().err  # the weak check says so
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["detector_oof_check"]["verified"] is True
    assert report["detector_oof_check"]["strict"] is False


def _provenance(det_csv, runs_by_fold: dict[int, list[str]], folds_csv) -> None:
    """A provenance record: the detector trained with validation fold k predicted runs_by_fold[k]."""
    from cxrdet.formats.provenance import write_provenance

    runs = [{"models": [{"artifact": f"/runs/f{k}/export", "folds": str(folds_csv), "fold": k}],
             "folds": str(folds_csv), "fold": k, "shard": None, "tta": "none", "image_ids": ids}
            for k, ids in runs_by_fold.items()]
    write_provenance(det_csv, runs)


def test_provenance_checks_each_image_against_the_detector_that_predicted_it(data, tmp_path, capsys):
    det = tmp_path / "oof.csv"
    det.write_bytes((data / "sub.csv").read_bytes())
    folds = pd.read_csv(data / "FOLDS.csv", dtype={"image_id": str})
    ids = folds["image_id"].tolist()
    all_runs = []
    for k in range(4):  # every fold's run given: the weak check would accept anything
        r = tmp_path / f"run_fold{k}"
        r.mkdir()
        (r / "config.json").write_text(json.dumps({"folds": str(data / "FOLDS.csv"), "fold": k}))
        all_runs += ["--detector-run", str(r)]
    # fold 0's detector predicted every image: three quarters of them are in-fold
    _provenance(det, {0: ids}, data / "FOLDS.csv")
    assert train_gate(data, tmp_path / "out", "--detections", str(det), *all_runs) == 2
    err = capsys.readouterr().err
    first_in_fold = folds.loc[folds["fold"] != 0, "image_id"].iloc[0]
    assert "45 image(s) were predicted by detector /runs/f0/export" in err and first_in_fold in err
    assert "--folds FOLDS.csv --fold K" in err and "Traceback" not in err
    assert "or train the gate without detector evidence (flags: --detections, --detector-run;" in err
    # an image missing from the record is refused too (stale record)
    by_fold = {k: folds.loc[folds["fold"] == k, "image_id"].tolist() for k in range(4)}
    _provenance(det, {k: v for k, v in by_fold.items() if k != 3}, data / "FOLDS.csv")
    assert train_gate(data, tmp_path / "out", "--detections", str(det)) == 2
    assert "not in its provenance record" in capsys.readouterr().err
    # each fold predicted by its own detector: accepted, strictly checked, no --detector-run needed
    _provenance(det, by_fold, data / "FOLDS.csv")
    assert train_gate(data, tmp_path / "out", "--detections", str(det), "--no-ablation") == 0
    check = json.loads((tmp_path / "out" / "report.json").read_text())["detector_oof_check"]
    assert check["strict"] is True and check["n_images_checked"] == N
    assert check["models"] == [f"/runs/f{k}/export" for k in range(4)]


def test_abnormal_rule_any_versus_majority():
    rows = [dict(image_id="a", class_id=0, rad_id="R1", x_min=1, y_min=1, x_max=5, y_max=5),
            dict(image_id="a", class_id=14, rad_id="R2"), dict(image_id="a", class_id=14, rad_id="R3"),
            dict(image_id="b", class_id=0, rad_id="R1", x_min=1, y_min=1, x_max=5, y_max=5),
            dict(image_id="b", class_id=2, rad_id="R2", x_min=1, y_min=1, x_max=5, y_max=5),
            dict(image_id="b", class_id=14, rad_id="R3"),
            dict(image_id="c", class_id=14, rad_id="R1")]
    labels = labels_frame(rows)
    assert abnormal_targets(labels, "any").to_dict() == {"a": 1, "b": 1, "c": 0}
    assert abnormal_targets(labels, "majority").to_dict() == {"a": 0, "b": 1, "c": 0}


def test_read_detections_from_det_csv_and_refuses_gated_submissions(tmp_path):
    det_csv = tmp_path / "dets.csv"
    det_csv.write_text("image_id,class_id,score,x_min,y_min,x_max,y_max\n"
                       "a,3,0.7,1,2,30,40\na,0,0.2,5,5,9,9\nzz,1,0.9,0,0,4,4\n")
    dets = read_detections(det_csv, ["a", "b"])
    assert sorted(dets) == ["a", "b"]  # 'zz' is not a training image; 'b' had no boxes
    assert dets["a"].class_ids.tolist() == [3, 0] and len(dets["b"]) == 0
    gated = tmp_path / "gated.csv"
    gated.write_text("image_id,PredictionString\na,3 0.7 1 2 30 40 14 0.4 0 0 1 1\nb,14 1 0 0 1 1\n")
    with pytest.raises(UserError, match="gated submission"):
        read_detections(gated, ["a", "b"])


def test_lr_and_seed_reach_xgboost_and_the_old_spelling_exits_2(data, tmp_path, capsys):
    from cxrdet.gate.train import make_gate

    base = ["--meta", "m.csv", "--labels", "l.csv", "--out", "o"]
    gate = make_gate(get_args_parser().parse_args([*base, "--lr", "0.15"]))
    assert gate.learning_rate == 0.15 and gate._params()["eta"] == 0.15
    assert make_gate(get_args_parser().parse_args(base)).random_state == 0  # the one --seed default
    with pytest.raises(SystemExit) as e:
        train_gate(data, tmp_path / "out", "--learning-rate", "0.1")
    assert e.value.code == 2
    assert "cxrdet train-gate: error: --learning-rate 0.1: renamed to --lr 0.1" in capsys.readouterr().err


def test_too_few_images_for_the_folds_names_the_counts_then_the_flags(data, tmp_path, capsys):
    assert train_gate(data, tmp_path / "out", "--no-pixel", "--n-folds", "30") == 2
    err = capsys.readouterr().err
    assert "needs at least 30 normal and 30 abnormal images for 30-fold cross-validation, found [40, 20]" in err
    assert "use fewer folds (n_folds=30)" in err and "(flags: --folds FOLDS.csv or --n-folds K)" in err
