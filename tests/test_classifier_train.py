"""Classifier end to end on tiny synthetic data (CPU): learning on VinBigData-like soft labels
with held-out AUROC checked through classify + evaluate-classifier, the run folder, resume (and
locked flags), shards merged, multi-class on an ImageFolder of PNGs, and DDP validation equal to
single-process validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from cxrdet.classes import CLASS_NAMES
from cxrdet.classifier.config import ClassifierConfig
from cxrdet.classifier.data import ClassifierDataModule
from cxrdet.classifier.module import ClassifierModule
from cxrdet.cli import main as cli

from classifier_fixtures import limit_threads, make_image_folder, make_vinbig, train_args, write_folds

limit_threads()
REPO = Path(__file__).resolve().parents[1]


def metrics(run: Path) -> pd.DataFrame:
    return pd.concat([pd.read_csv(f) for f in sorted(run.glob("logs/version_*/metrics.csv"))], ignore_index=True)


@pytest.fixture(scope="module")
def vinbig(tmp_path_factory):
    return make_vinbig(tmp_path_factory.mktemp("clf") / "data", n=120)


@pytest.fixture(scope="module")
def run(vinbig, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert cli(train_args(vinbig, out, "--epochs", "3", "--resume", "auto")) == 0
    return out


@pytest.mark.slow
def test_learns_soft_labels_held_out_auroc(run, vinbig, tmp_path):
    for name in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "config.json", "export/model.pt",
                 "export/config.json"):
        assert (run / name).is_file(), name
    assert list(run.glob("tb/version_0/events.out.tfevents.*"))
    m = metrics(run)
    assert m["val_score"].notna().sum() == 3 and (m["val_images"].dropna() == 60).all()
    cfg = json.loads((run / "export/config.json").read_text())
    assert cfg["task"] == "multilabel" and cfg["class_names"][-1] == "abnormal" and len(cfg["pos_weight"]) == 15

    probs = tmp_path / "oof.csv"  # fold 0 was never trained on
    assert cli(["classify", "--model", str(run / "export"), "--cache", str(vinbig["cache"]), "--folds",
                str(vinbig["folds"]), "--fold", "0", "--workers", "0", "--tta", "hflip", "--out", str(probs)]) == 0
    record = json.loads((tmp_path / "oof.provenance.json").read_text())["runs"][0]
    assert record["models"][0]["fold"] == 0 and len(record["image_ids"]) == 60
    assert (tmp_path / "oof.errors.csv").read_text().strip() == "item,reason"
    assert cli(["evaluate-classifier", "--labels", str(vinbig["labels"]), "--probs", str(probs),
                "--out", str(tmp_path / "eval"), "--bootstrap", "50"]) == 0
    report = json.loads((tmp_path / "eval/metrics.json").read_text())
    auroc = {k: v["auroc"] for k, v in report["per_class"].items()}
    assert auroc["abnormal"] >= 0.8
    for frequent in ("Aortic enlargement", "Cardiomegaly", "Pleural effusion"):
        assert auroc[frequent] >= 0.7, (frequent, auroc[frequent])
    assert (tmp_path / "eval/plots/roc_curves.png").stat().st_size > 5000
    assert (tmp_path / "eval/plots/reliability.png").stat().st_size > 5000


@pytest.mark.slow
def test_shards_merge_to_the_unsharded_file(run, vinbig, tmp_path):
    base = ["classify", "--model", str(run / "export"), "--cache", str(vinbig["cache"]), "--workers", "0",
            "--batch-size", "1"]  # batch 1: a batch's other images cannot move a last digit
    assert cli([*base, "--out", str(tmp_path / "all.csv")]) == 0
    # two worker processes read and resize (ResizeCollate) and hand over one tensor per batch: same bytes
    assert cli([*base, "--workers", "2", "--out", str(tmp_path / "w2.csv")]) == 0
    assert (tmp_path / "w2.csv").read_bytes() == (tmp_path / "all.csv").read_bytes()
    for i in range(2):
        assert cli([*base, "--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}.csv")]) == 0
    assert cli(["merge-probabilities", "--out", str(tmp_path / "m.csv"), str(tmp_path / "s0.csv"),
                str(tmp_path / "s1.csv"), "--expect", "120"]) == 0
    assert (tmp_path / "m.csv").read_bytes() == (tmp_path / "all.csv").read_bytes()
    runs = json.loads((tmp_path / "m.provenance.json").read_text())["runs"]
    assert [r["shard"] for r in runs] == ["0/2", "1/2"]
    assert cli(["merge-probabilities", "--out", str(tmp_path / "x.csv"), str(tmp_path / "s0.csv"),
                str(tmp_path / "s0.csv")]) == 2  # an image in two shards


@pytest.mark.slow
def test_resume_continues_and_locks_validation_flags(run, vinbig, capsys):
    before = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"]
    assert cli(train_args(vinbig, run, "--size", "48", "--resume")) == 2
    assert "--resume cannot change --size" in capsys.readouterr().err
    assert cli(train_args(vinbig, run, "--epochs", "4", "--resume")) == 0
    after = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert after["global_step"] == before + before // 3  # one more epoch of the same length
    assert after["epoch"] == 4 or after["epoch"] == 3
    assert cli(train_args(vinbig, run, "--epochs", "4")) == 2  # a fresh run into a used folder
    assert "already holds a run" in capsys.readouterr().err


def test_pickled_weights_are_refused_by_the_command(vinbig, tmp_path, capsys):
    from cxrdet.classifier.backbones import build_backbone

    torch.save(build_backbone("resnet18", 1000), tmp_path / "model.pth")  # a pickled nn.Module
    assert cli(train_args(vinbig, tmp_path / "run", "--weights", str(tmp_path / "model.pth"))) == 2
    err = capsys.readouterr().err
    assert "model.pth was refused: it is not a plain state dict" in err and "Traceback" not in err
    assert not (tmp_path / "run/checkpoints").exists()


@pytest.mark.slow
def test_multiclass_image_folder_of_pngs(tmp_path):
    images = make_image_folder(tmp_path / "images", per_class=24)
    assert cli(["prepare", "--image-dir", str(images), "--out", str(tmp_path / "c.h5"), "--meta-out",
                str(tmp_path / "meta.csv"), "--size", "48", "--workers", "1"]) == 0
    ids = pd.read_csv(tmp_path / "meta.csv")["image_id"].tolist()
    paths = {"cache": tmp_path / "c.h5", "labels": images, "folds": write_folds(tmp_path / "folds.csv", ids)}
    out = tmp_path / "run"
    assert cli([*train_args(paths, out, "--epochs", "6"), "--size", "48"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["task"], cfg["class_names"]) == ("multiclass", ["Bars", "Disc", "Square"])
    best = metrics(out)["val_score"].max()
    assert best >= 0.8  # chance is 1/3
    probs = tmp_path / "probs.csv"
    (images / "Disc" / "zz_broken.png").write_bytes(b"\x89PNG truncated")  # after prepare: classify meets it
    assert cli(["classify", "--model", str(out / "export"), "--image-dir", str(images), "--workers", "0",
                "--out", str(probs)]) == 3
    errors = pd.read_csv(tmp_path / "probs.errors.csv")
    assert errors["item"].tolist() == ["Disc__zz_broken"] and "not a readable PNG" in errors["reason"][0]
    assert cli(["evaluate-classifier", "--labels", str(images), "--probs", str(probs), "--out",
                str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert report["task"] == "multiclass" and report["images"] == 72 and report["accuracy"] >= 0.8
    assert sum(map(sum, report["confusion_matrix"])) == 72
    assert (tmp_path / "eval/plots/confusion_matrix.png").is_file()


@pytest.mark.slow
def test_ddp_validation_auroc_equals_single_process(tmp_path):
    data = make_vinbig(tmp_path / "data", n=45, seed=1)  # fold 1 holds 22, fold 0 23 (odd: padding)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = train_args(data, out, "--fold", "0", "--epochs", "1", "--devices", "2", "--strategy", "ddp",
                      "--val-batch-size", "4", "--arch", "mobilenet_v3_small")
    proc = subprocess.run([sys.executable, "-m", "cxrdet", *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = metrics(out)
    ddp_score = m["val_score"].dropna()
    assert len(ddp_score) == 1 and (m["val_images"].dropna() == 23).all()
    module = ClassifierModule.load_from_checkpoint(out / "checkpoints/last.ckpt", weights_only=True)
    cfg = ClassifierConfig.from_dict(module.hparams["config"])
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    (res,) = trainer.validate(module, datamodule=ClassifierDataModule(cfg), verbose=False)
    assert res["val_images"] == 23
    assert res["val_score"] == pytest.approx(float(ddp_score.iloc[-1]), abs=1e-6)


@pytest.mark.slow
def test_infer_adds_classifier_columns_in_the_same_pass(run, vinbig, tmp_path):
    from cxrdet.detector.export import write_artifact
    from cxrdet.detector.model import build_detector
    from cxrdet.formats.image_level import IMAGE_LEVEL_COLUMNS
    from cxrdet.formats.probabilities import read_probabilities

    from detector_fixtures import tiny_config

    det_cfg = tiny_config(vinbig, tmp_path, min_size=64, max_size=64, cache_size=64, cache_voi="auto")
    torch.manual_seed(0)
    write_artifact(build_detector(det_cfg).state_dict(), det_cfg, tmp_path / "det")  # random weights suffice
    base = ["--cache", str(vinbig["cache"]), "--workers", "0", "--batch-size", "4"]
    assert cli(["infer", "--model", str(tmp_path / "det"), "--classifier", str(run / "export"), *base,
                "--out", str(tmp_path / "sub.csv"), "--image-level-out", str(tmp_path / "il.csv")]) == 0
    il = pd.read_csv(tmp_path / "il.csv").set_index("image_id")
    assert list(il.columns[:len(IMAGE_LEVEL_COLUMNS) - 1]) == IMAGE_LEVEL_COLUMNS[1:]
    assert "clf_Nodule_Mass" in il.columns and "clf_abnormal" in il.columns and len(il) == 120
    assert cli(["classify", "--model", str(run / "export"), *base, "--out", str(tmp_path / "p.csv")]) == 0
    probs = read_probabilities(tmp_path / "p.csv").frame()
    for name in ("Aortic enlargement", "Cardiomegaly", "abnormal"):
        col = "clf_" + name.replace(" ", "_")
        assert (il[col] - probs[name].reindex(il.index)).abs().max() < 2e-6, name
    assert cli(["infer", "--model", str(tmp_path / "det"), "--classifier", str(run / "export"), *base,
                "--out", str(tmp_path / "x.csv")]) == 2  # nothing would use the classifier
    assert cli(["merge-submissions", "--out", str(tmp_path / "m.csv"), str(tmp_path / "sub.csv"),
                "--image-level", str(tmp_path / "il.csv"), "--image-level-out", str(tmp_path / "mil.csv")]) == 0
    assert (tmp_path / "mil.csv").read_text() == (tmp_path / "il.csv").read_text()


@pytest.mark.slow
def test_gate_with_classifier_evidence_needs_the_classifier_and_rescoring_multiplies_scores(run, vinbig, tmp_path):
    from cxrdet.detector.export import write_artifact
    from cxrdet.detector.model import build_detector
    from cxrdet.formats.image_level import classifier_column
    from cxrdet.formats.submission import read_submission
    from cxrdet.gate.features import META_REQUIRED

    from detector_fixtures import tiny_config

    det_cfg = tiny_config(vinbig, tmp_path, min_size=64, max_size=64, cache_size=64, cache_voi="auto")
    torch.manual_seed(0)
    write_artifact(build_detector(det_cfg).state_dict(), det_cfg, tmp_path / "det")
    ids = sorted(pd.read_csv(vinbig["folds"], dtype={"image_id": str})["image_id"])
    meta = pd.DataFrame({c: [""] * len(ids) for c in META_REQUIRED})
    meta["image_id"], meta["rows"], meta["columns"] = ids, 128, 128
    meta.to_csv(tmp_path / "META.csv", index=False)
    oof = tmp_path / "oof_probs.csv"  # the run held out fold 0: its probabilities there are out-of-fold
    assert cli(["classify", "--model", str(run / "export"), "--cache", str(vinbig["cache"]), "--folds",
                str(vinbig["folds"]), "--fold", "0", "--workers", "0", "--out", str(oof)]) == 0
    gate = tmp_path / "gate"
    assert cli(["train-gate", "--meta", str(tmp_path / "META.csv"), "--no-pixel", "--labels", str(vinbig["labels"]),
                "--classifier-probs", str(oof), "--n-folds", "2", "--n-estimators", "30", "--workers", "1",
                "--out", str(gate)]) == 0
    base = ["infer", "--model", str(tmp_path / "det"), "--cache", str(vinbig["cache"]), "--workers", "0",
            "--gate", str(gate), "--conf", "0.0"]
    assert cli([*base, "--out", str(tmp_path / "refused.csv")]) == 2  # the gate needs --classifier
    assert not (tmp_path / "refused.csv").exists()
    with_clf = [*base, "--classifier", str(run / "export"), "--image-level-out", str(tmp_path / "il.csv")]
    assert cli([*with_clf, "--rescore", "none", "--out", str(tmp_path / "plain.csv")]) == 0
    assert cli([*with_clf, "--out", str(tmp_path / "auto.csv")]) == 0  # default auto: the gate's choice
    assert cli([*with_clf, "--rescore", "classifier", "--out", str(tmp_path / "rescored.csv")]) == 0
    plain, rescored = read_submission(tmp_path / "plain.csv"), read_submission(tmp_path / "rescored.csv")
    il = pd.read_csv(tmp_path / "il.csv", dtype={"image_id": str}).set_index("image_id")
    order = ["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"]
    findings = plain[plain["class_id"] < 14].sort_values(order).reset_index(drop=True)
    assert len(findings) > 0 and len(rescored) == len(plain)
    factor = [il.at[i, classifier_column(CLASS_NAMES[c])] for i, c in zip(findings["image_id"], findings["class_id"])]
    got = rescored[rescored["class_id"] < 14].sort_values(order).reset_index(drop=True)
    assert np.allclose(got["score"], findings["score"] * np.array(factor), rtol=0, atol=1.01e-4)  # 4-decimal scores
    assert np.allclose(got[["x_min", "y_min", "x_max", "y_max"]], findings[["x_min", "y_min", "x_max", "y_max"]])
    # the gate saw too few out-of-fold images to trust a rescoring gain: it recorded none, and auto follows
    assert json.loads((gate / "gate_schema.json").read_text())["rescore"]["choice"] == "none"
    assert (tmp_path / "auto.csv").read_text() == (tmp_path / "plain.csv").read_text()
