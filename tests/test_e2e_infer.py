"""End to end through the CLI on tiny synthetic data: synth -> prepare -> split -> a few training
steps of the light detector -> out-of-fold detections -> gate -> infer (DICOM, cache, PNG inputs;
broken files; shards + merge; overlays; hostile ids).

The pipeline is built once per module (about a minute on 2 cores); each test then runs infer
in-process on 6 test images."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrdet.cli import main as cli
from cxrdet.preprocess.cache import CacheReader
from cxrdet.submission import read_submission

pytestmark = pytest.mark.slow

SIZE = 128  # cache long side: tiny, so a few CPU training steps are cheap


def run(*argv: str) -> int:
    return cli([str(a) for a in argv])


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    assert run("synth", "--out", d / "syn", "--n-train", 16, "--n-test", 6, "--scale", 0.1, "--seed", 3,
               "--no-progress") == 0
    for split in ("train", "test"):
        assert run("prepare", "--dicom-dir", d / "syn" / split, "--out", d / f"{split}.h5",
                   "--meta-out", d / f"{split}_meta.csv", "--size", SIZE, "--workers", 1) == 0
    assert run("split", "--labels", d / "syn" / "train.csv", "--folds", 2, "--out", d / "folds.csv") == 0
    assert run("train", "--out", d / "run", "--cache", d / "train.h5", "--labels", d / "syn" / "train.csv",
               "--folds", d / "folds.csv", "--fold", 0, "--model", "fasterrcnn_resnet18_fpn",
               "--min-size", SIZE, "--max-size", SIZE, "--max-steps", 3, "--batch-size", 2,
               "--val-batch-size", 4, "--workers", 0, "--accelerator", "cpu", "--devices", 1,
               "--warmup-steps", 1, "--score-thresh", 0.0) == 0
    model = d / "run" / "export"
    assert run("infer", "--model", model, "--cache", d / "train.h5", "--folds", d / "folds.csv", "--fold", 0,
               "--workers", 0, "--out", d / "oof.csv") == 0
    folds = pd.read_csv(d / "folds.csv", dtype={"image_id": str})
    labels = pd.read_csv(d / "syn" / "train.csv", dtype={"image_id": str}, keep_default_na=False)
    labels[labels["image_id"].isin(folds.loc[folds["fold"] == 0, "image_id"])].to_csv(d / "gate_labels.csv", index=False)
    assert run("train-gate", "--meta", d / "train_meta.csv", "--labels", d / "gate_labels.csv", "--out", d / "gate",
               "--detections", d / "oof.csv", "--detector-run", d / "run", "--n-folds", 2, "--no-ablation",
               "--n-estimators", 20, "--early-stopping", 5, "--workers", 1) == 0
    # the main run: DICOM input with DataLoader workers, the gate, overlays and the image-level CSV
    assert run("infer", "--model", model, "--dicom-dir", d / "syn" / "test", "--gate", d / "gate",
               "--workers", 2, "--batch-size", 1, "--vis-dir", d / "vis", "--vis-min-score", 0,
               "--image-level-out", d / "il.csv", "--out", d / "sub.csv") == 0
    meta = pd.read_csv(d / "test_meta.csv", dtype={"image_id": str})
    return {"dir": d, "model": model, "sizes": {r.image_id: (r.rows, r.columns) for r in meta.itertuples()}}


def infer(pipe, *extra, gate: bool = True) -> int:
    gate_args = ("--gate", pipe["dir"] / "gate") if gate else ()
    return run("infer", "--model", pipe["model"], *gate_args, "--batch-size", 1, "--workers", 0, *extra)


def test_submission_has_every_test_image_once_with_boxes_inside_the_original(pipe):
    d, sizes = pipe["dir"], pipe["sizes"]
    raw = pd.read_csv(d / "sub.csv", dtype={"image_id": str}, keep_default_na=False)
    assert sorted(raw["image_id"]) == sorted(sizes) and raw["image_id"].is_unique
    det = read_submission(d / "sub.csv")  # strict parser: malformed groups raise
    findings = det[det["class_id"] != 14]
    assert len(findings) > 0
    h = findings["image_id"].map(lambda i: sizes[i][0])
    w = findings["image_id"].map(lambda i: sizes[i][1])
    assert (findings["x_min"] >= 0).all() and (findings["y_min"] >= 0).all()
    assert (findings["x_max"] <= w).all() and (findings["y_max"] <= h).all()
    for s in raw["PredictionString"]:
        tokens = s.split()
        groups = [tokens[i:i + 6] for i in range(0, len(tokens), 6)]
        for g in groups:
            if g[0] == "14":
                assert g[2:] == ["0", "0", "1", "1"]
        assert sum(g[0] == "14" for g in groups) <= 1  # at most one class-14 call (none when p >= high)
    il = pd.read_csv(d / "il.csv", dtype={"image_id": str})
    assert sorted(il["image_id"]) == sorted(sizes)
    assert il["p_abnormal"].between(0, 1).all()
    assert (d / "sub.errors.csv").read_text().strip() == "item,reason"


def test_overlays_are_written_and_show_coloured_boxes(pipe):
    vis = pipe["dir"] / "vis"
    pictures = sorted(p.stem for p in vis.glob("*.png"))
    assert pictures == sorted(pipe["sizes"])
    img = cv2.imread(str(vis / f"{pictures[0]}.png"))
    coloured = (img[..., 0] != img[..., 1]) | (img[..., 1] != img[..., 2])
    assert coloured.mean() > 0.005  # boxes and labels in class colours over the grey X-ray
    assert img.std() > 10


def test_cache_and_png_inputs_give_the_dicom_submission(pipe, tmp_path):
    d = pipe["dir"]
    assert infer(pipe, "--cache", d / "test.h5", "--out", tmp_path / "cache.csv") == 0
    png = tmp_path / "png"
    png.mkdir()
    rows = []
    with CacheReader(d / "test.h5") as cache:
        for image_id in cache.ids:
            image, attrs = cache.read(image_id)
            cv2.imwrite(str(png / f"{image_id}.png"), image)
            rows.append((image_id, attrs["orig_height"], attrs["orig_width"]))
    pd.DataFrame(rows, columns=["image_id", "dim0", "dim1"]).to_csv(tmp_path / "sizes.csv", index=False)
    sizes = tmp_path / "sizes.csv"
    assert infer(pipe, "--png-dir", png, "--png-sizes", sizes, "--out", tmp_path / "png.csv", gate=False) == 0
    assert infer(pipe, "--cache", d / "test.h5", "--out", tmp_path / "cache_nogate.csv", gate=False) == 0
    assert (tmp_path / "cache.csv").read_bytes() == (d / "sub.csv").read_bytes()
    # PNGs carry no DICOM metadata for the gate, so they are compared on the detections alone
    assert (tmp_path / "png.csv").read_bytes() == (tmp_path / "cache_nogate.csv").read_bytes()


def test_broken_dicom_is_listed_exit_3_and_only_labelled_normal_when_asked(pipe, tmp_path, capsys):
    d = pipe["dir"]
    dicoms = tmp_path / "dicoms"
    shutil.copytree(d / "syn" / "test", dicoms)
    first = sorted(dicoms.iterdir())[0]
    (dicoms / "broken.dicom").write_bytes(first.read_bytes()[:2000])  # truncated pixel data
    assert infer(pipe, "--dicom-dir", dicoms, "--out", tmp_path / "fail.csv") == 3
    errors = pd.read_csv(tmp_path / "fail.errors.csv")
    assert errors["item"].tolist() == ["broken"] and errors["reason"].str.len().min() > 10
    assert "broken" in capsys.readouterr().err
    fail = pd.read_csv(tmp_path / "fail.csv", dtype={"image_id": str})
    assert "broken" not in set(fail["image_id"]) and len(fail) == len(pipe["sizes"])
    assert infer(pipe, "--dicom-dir", dicoms, "--on-error", "normal", "--out", tmp_path / "normal.csv",
                 "--errors-out", tmp_path / "errs.csv") == 3
    normal = pd.read_csv(tmp_path / "normal.csv", dtype={"image_id": str}).set_index("image_id")
    assert normal.loc["broken", "PredictionString"] == "14 1 0 0 1 1"
    assert pd.read_csv(tmp_path / "errs.csv")["item"].tolist() == ["broken"]


def test_shards_merged_equal_the_unsharded_run(pipe, tmp_path):
    d = pipe["dir"]
    subs, ils = [], []
    for i in range(2):
        subs.append(tmp_path / f"sub_{i}.csv")
        ils.append(tmp_path / f"il_{i}.csv")
        assert infer(pipe, "--dicom-dir", d / "syn" / "test", "--shard", f"{i}/2", "--out", subs[i],
                     "--image-level-out", ils[i]) == 0
    sizes = [len(pd.read_csv(s)) for s in subs]
    assert sizes == [3, 3]
    assert run("merge-submissions", "--out", tmp_path / "all.csv", *subs, "--image-level", *ils,
               "--image-level-out", tmp_path / "all_il.csv", "--expect", 6) == 0
    assert (tmp_path / "all.csv").read_bytes() == (d / "sub.csv").read_bytes()
    assert (tmp_path / "all_il.csv").read_bytes() == (d / "il.csv").read_bytes()


def test_ids_that_would_escape_the_overlay_folder_are_refused(pipe, tmp_path, capsys):
    png = tmp_path / "png"
    png.mkdir()
    cv2.imwrite(str(png / "..png"), np.zeros((64, 48), np.uint8))  # image id "."
    (tmp_path / "sizes.csv").write_text("image_id,dim0,dim1\n.,640,480\n")
    vis = tmp_path / "deep" / "vis"
    rc = infer(pipe, "--png-dir", png, "--png-sizes", tmp_path / "sizes.csv", "--vis-dir", vis,
               "--out", tmp_path / "sub.csv")
    assert rc == 2
    assert "cannot be used as a file name" in capsys.readouterr().err
    assert not (tmp_path / "sub.csv").exists() and not list(tmp_path.glob("deep/*.png"))
