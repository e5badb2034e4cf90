"""End to end through the CLI on tiny synthetic data: synth -> prepare -> split -> a few training
steps of the light detector -> out-of-fold detections -> gate -> infer (DICOM, cache, PNG inputs;
broken files; shards + merge; overlays; hostile ids; gate rules under stored and overridden
thresholds; TTA and ensembles; a box of known place through the whole chain; failures inside a
batch).

The pipeline is built once per module (about 15 s on 2 cores); each test then runs infer
in-process on 6 test images."""

from __future__ import annotations

import shutil
from collections import Counter

import cv2
import numpy as np
import pandas as pd
import pytest

import cxrdet.detector.predict
import cxrdet.inference.infer
from cxrdet.cli import main as cli
from cxrdet.detections import Detections
from cxrdet.dicomio.write import write_dicom
from cxrdet.formats.provenance import provenance_path, read_provenance
from cxrdet.preprocess.cache import CacheReader
from cxrdet.formats.submission import read_submission
from test_infer_units import _bright_bbox

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
    assert run("split", "--labels", d / "syn" / "train.csv", "--n-folds", 2, "--out", d / "folds.csv") == 0
    assert run("train", "--out", d / "run", "--cache", d / "train.h5", "--labels", d / "syn" / "train.csv",
               "--folds", d / "folds.csv", "--fold", 0, "--arch", "fasterrcnn_resnet18_fpn",
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
               "--workers", 2, "--batch-size", 1, "--vis-dir", d / "vis", "--vis-conf", 0,
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
    runs = read_provenance(provenance_path(tmp_path / "all.csv"))  # merged from the shards' records
    assert [r["shard"] for r in runs] == ["0/2", "1/2"]
    assert sorted(sum((r["image_ids"] for r in runs), [])) == sorted(pipe["sizes"])


def test_oof_detections_carry_provenance_and_the_gate_checked_them_strictly(pipe, tmp_path, capsys):
    import json

    d = pipe["dir"]
    (run,) = read_provenance(provenance_path(d / "oof.csv"))
    folds = pd.read_csv(d / "folds.csv", dtype={"image_id": str})
    assert run["fold"] == 0 and run["image_ids"] == sorted(folds.loc[folds["fold"] == 0, "image_id"])
    assert run["models"] == [{"artifact": str(pipe["model"].resolve()), "folds": str((d / "folds.csv").resolve()),
                              "fold": 0}]
    check = json.loads((d / "gate" / "report.json").read_text())["detector_oof_check"]
    assert check["strict"] is True and check["n_images_checked"] == len(run["image_ids"])
    # predicting the fold this detector trained on is flagged at once
    assert infer(pipe, "--cache", d / "train.h5", "--folds", d / "folds.csv", "--fold", 1,
                 "--out", tmp_path / "in_fold.csv", gate=False) == 0
    assert "these detections are in-fold" in capsys.readouterr().err


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


# --- gate rules (low/high thresholds: see cxrdet/gate/rules.py) row by row ----------------------------------------------------

def _groups(prediction_string: str) -> list[tuple[str, ...]]:
    tokens = prediction_string.split()
    return [tuple(tokens[i:i + 6]) for i in range(0, len(tokens), 6)]


def _rows(csv_path) -> dict[str, str]:
    df = pd.read_csv(csv_path, dtype={"image_id": str}, keep_default_na=False)
    assert df["image_id"].is_unique
    return dict(zip(df["image_id"], df["PredictionString"]))


def check_gate_rows(sub_csv, il_csv, low: float, high: float, ungated: dict[str, str] | None) -> Counter:
    """Assert every row follows the gate rules for its p_abnormal; returns rows per zone.

    ``ungated``: the detections-only rows of the same images (no --gate), which must be the
    findings of every row the gate did not call normal (None: only check there are findings).
    """
    rows = _rows(sub_csv)
    p_abnormal = pd.read_csv(il_csv, dtype={"image_id": str}).set_index("image_id")["p_abnormal"]
    assert sorted(rows) == sorted(p_abnormal.index)
    zones: Counter = Counter()
    for image_id, text in rows.items():
        p = float(p_abnormal[image_id])
        groups = _groups(text)
        normal = [g for g in groups if g[0] == "14"]
        findings = sorted(g for g in groups if g[0] != "14")
        if p < low:
            assert text == "14 1 0 0 1 1", (image_id, p, text)
            zones["normal"] += 1
            continue
        assert findings, (image_id, p)  # the detector (score threshold 0) always finds something
        if ungated is not None:
            assert findings == sorted(_groups(ungated[image_id])), (image_id, p)
        if p < high:
            assert len(normal) == 1 and normal[0][2:] == ("0", "0", "1", "1")
            # 4 decimals in the submission, 6 significant digits in the image-level CSV
            assert abs(float(normal[0][1]) - (1 - p)) <= 6e-5, (image_id, p, normal)
            zones["hedged"] += 1
        else:
            assert not normal, (image_id, p, text)
            zones["findings_only"] += 1
    return zones


@pytest.fixture(scope="module")
def ungated(pipe, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("ungated") / "sub.csv"
    assert infer(pipe, "--dicom-dir", pipe["dir"] / "syn" / "test", "--out", out, gate=False) == 0
    return _rows(out)


def _stored_thresholds(pipe) -> tuple[float, float]:
    import json

    t = json.loads((pipe["dir"] / "gate" / "gate_schema.json").read_text())["thresholds"]
    return float(t["low"]), float(t["high"])


def test_every_row_follows_the_gate_rules_under_the_stored_thresholds(pipe, ungated):
    low, high = _stored_thresholds(pipe)
    zones = check_gate_rows(pipe["dir"] / "sub.csv", pipe["dir"] / "il.csv", low, high, ungated)
    assert sum(zones.values()) == len(pipe["sizes"])


def test_low_high_overrides_move_rows_between_the_rules(pipe, ungated, tmp_path):
    d = pipe["dir"]
    p = pd.read_csv(d / "il.csv")["p_abnormal"]
    assert p.min() > 0  # XGBoost probabilities are never exactly 0, so high=min(p) is valid
    # all below low (every image called normal); then all at or above high (findings only)
    cases = {"normal": (float(p.max()) + 1e-3, float(p.max()) + 2e-3), "findings_only": (0.0, float(p.min()))}
    for zone, (low, high) in cases.items():
        sub, il = tmp_path / f"{zone}.csv", tmp_path / f"{zone}_il.csv"
        assert infer(pipe, "--dicom-dir", d / "syn" / "test", "--low", f"{low!r}", "--high", f"{high!r}",
                     "--image-level-out", il, "--out", sub) == 0
        pd.testing.assert_series_equal(pd.read_csv(il)["p_abnormal"], p)  # thresholds do not move p
        assert check_gate_rows(sub, il, low, high, ungated) == Counter({zone: len(pipe["sizes"])})


def test_hflip_tta_and_a_two_model_ensemble_through_the_cli(pipe, ungated, tmp_path):
    import torch

    d = pipe["dir"]
    second = tmp_path / "model2"
    shutil.copytree(pipe["model"], second)
    state = torch.load(second / "model.pt", weights_only=True)
    torch.manual_seed(0)
    for k, v in state.items():  # a different detector of the same architecture and cache settings
        if k.startswith("roi_heads.box_predictor") and v.is_floating_point():
            state[k] = v + 0.05 * torch.randn_like(v)
    torch.save(state, second / "model.pt")
    low, high = _stored_thresholds(pipe)
    findings = {"plain": {k: sorted(g for g in _groups(v) if g[0] != "14") for k, v in _rows(d / "sub.csv").items()}}
    for name, extra in {"tta": ("--tta", "hflip"), "ensemble": ("--model", second)}.items():
        sub, il = tmp_path / f"{name}.csv", tmp_path / f"{name}_il.csv"
        assert infer(pipe, "--dicom-dir", d / "syn" / "test", *extra, "--image-level-out", il, "--out", sub) == 0
        check_gate_rows(sub, il, low, high, None)
        findings[name] = {k: sorted(g for g in _groups(v) if g[0] != "14") for k, v in _rows(sub).items()}
        models = read_provenance(provenance_path(sub))[0]["models"]
        assert len(models) == (2 if name == "ensemble" else 1)
    # each option changes the detections (hflip views, a second detector: fused with WBF)
    assert findings["tta"] != findings["plain"] and findings["ensemble"] != findings["plain"]
    assert findings["tta"] != findings["ensemble"]


# --- a box of known place, through the whole chain --------------------------------------------

def test_known_box_in_a_non_square_dicom_maps_back_through_the_cli(pipe, tmp_path, monkeypatch):
    """DICOM (non-square, 1215 x 997) -> prepare path -> 128 px cache -> detector -> original
    pixels -> submission. The detector is replaced by one that reports exactly the bright
    rectangle it sees in the cache image (sub-pixel), so any error is the pipeline's mapping."""
    orig_hw, truth = (1215, 997), np.array([211.0, 604.0, 689.0, 1003.0])  # x0, y0, x1, y1
    stored = np.zeros(orig_hw, dtype=np.uint16)
    x0, y0, x1, y1 = truth.astype(int)
    stored[y0:y1, x0:x1] = 4095  # no window tags: min-max VOI maps it to exactly 0 and 255
    folder = tmp_path / "dicoms"
    folder.mkdir()
    write_dicom(folder / "lesion.dicom", stored, bits_stored=12)
    seen = []

    def perfect_detector(model, images):
        seen.extend(np.asarray(im).shape for im in images)
        return [Detections(_bright_bbox(np.asarray(im)), [0.9], [8]) for im in images]

    monkeypatch.setattr(cxrdet.detector.predict, "predict", perfect_detector)
    assert infer(pipe, "--dicom-dir", folder, "--out", tmp_path / "sub.csv", gate=False) == 0
    assert seen == [(128, 105)]  # the detector saw the aspect-kept cache image
    groups = _groups(_rows(tmp_path / "sub.csv")["lesion"])
    assert len(groups) == 1 and groups[0][:2] == ("8", "0.9")
    assert np.abs(np.array(groups[0][2:], dtype=float) - truth).max() <= 2.0


# --- failures inside a batch are listed; the rest is still written ------------------------------

def test_overlay_write_error_for_one_image_is_listed_and_the_rest_written(pipe, tmp_path, monkeypatch, capsys):
    d = pipe["dir"]
    victim = sorted(pipe["sizes"])[2]
    real = cxrdet.inference.infer.write_overlay

    def flaky(vis_dir, image_id, *a, **k):
        if image_id == victim:
            raise OSError(28, "No space left on device", f"{vis_dir}/{image_id}.png")
        return real(vis_dir, image_id, *a, **k)

    # a batch of 3 holds the victim and two others, which must survive it
    assert infer(pipe, "--cache", d / "test.h5", "--batch-size", 3, "--out", tmp_path / "clean.csv") == 0
    monkeypatch.setattr(cxrdet.inference.infer, "write_overlay", flaky)
    rc = infer(pipe, "--cache", d / "test.h5", "--batch-size", 3, "--vis-dir", tmp_path / "vis",
               "--image-level-out", tmp_path / "il.csv", "--out", tmp_path / "sub.csv")
    assert rc == 3
    errors = pd.read_csv(tmp_path / "sub.errors.csv")
    assert errors["item"].tolist() == [victim]
    assert "overlay" in errors["reason"][0] and "No space left" in errors["reason"][0]
    assert victim in capsys.readouterr().err
    rows = _rows(tmp_path / "sub.csv")
    assert sorted(rows) == sorted(set(pipe["sizes"]) - {victim})
    assert rows == {k: v for k, v in _rows(tmp_path / "clean.csv").items() if k != victim}
    assert victim not in set(pd.read_csv(tmp_path / "il.csv", dtype={"image_id": str})["image_id"])
    assert len(list((tmp_path / "vis").glob("*.png"))) == len(pipe["sizes"]) - 1


def test_a_detector_failure_lists_its_batch_and_the_other_batches_are_written(pipe, tmp_path, monkeypatch):
    real, calls = cxrdet.detector.predict.predict, []

    def fails_first(model, images):
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(model, images)

    monkeypatch.setattr(cxrdet.detector.predict, "predict", fails_first)
    rc = infer(pipe, "--cache", pipe["dir"] / "test.h5", "--batch-size", 2, "--out", tmp_path / "sub.csv")
    assert rc == 3
    first_batch = sorted(pipe["sizes"])[:2]  # the cache lists ids sorted
    errors = pd.read_csv(tmp_path / "sub.errors.csv")
    assert sorted(errors["item"]) == first_batch
    assert errors["reason"].str.contains("detector failed on its batch: RuntimeError: CUDA out of memory").all()
    assert sorted(_rows(tmp_path / "sub.csv")) == sorted(pipe["sizes"])[2:]


# --- PNG inputs: ids of the sizes CSV and of the folder must agree ------------------------------

def test_png_size_rows_without_png_and_png_without_size_row_are_listed(pipe, tmp_path):
    png = tmp_path / "png"
    png.mkdir()
    rows = []
    with CacheReader(pipe["dir"] / "test.h5") as cache:
        for image_id in cache.ids:
            image, attrs = cache.read(image_id)
            cv2.imwrite(str(png / f"{image_id}.png"), image)
            rows.append((image_id, attrs["orig_height"], attrs["orig_width"]))
    unsized = rows.pop()[0]  # its PNG stays, its size row goes
    rows.append(("ghost", 2000, 1800))  # a size row with no PNG
    (png / "corrupt.png").write_bytes(b"\x89PNG broken")  # unreadable AND without a size row
    pd.DataFrame(rows, columns=["image_id", "dim0", "dim1"]).to_csv(tmp_path / "sizes.csv", index=False)
    assert infer(pipe, "--png-dir", png, "--png-sizes", tmp_path / "sizes.csv", "--out", tmp_path / "sub.csv",
                 gate=False) == 3
    reasons = pd.read_csv(tmp_path / "sub.errors.csv").set_index("item")["reason"].to_dict()
    assert sorted(reasons) == sorted(["ghost", unsized, "corrupt"])
    assert "no " in reasons["ghost"] and "ghost.png" in reasons["ghost"]
    assert "no row for this image" in reasons[unsized] and "sizes.csv" in reasons[unsized]
    assert "not a readable PNG" in reasons["corrupt"]  # unreadable is said first, not "no size row"
    assert not any(r.startswith(("KeyError", "'")) for r in reasons.values())
    assert sorted(_rows(tmp_path / "sub.csv")) == sorted(set(pipe["sizes"]) - {unsized})


def test_conf_filters_the_submission_findings_only(pipe, tmp_path, capsys):
    """--conf drops findings under it from the submission; class-14 rows and overlays are unchanged."""
    d = pipe["dir"]
    ref = read_submission(d / "sub.csv")  # no --conf: every box (the cache run gives the same bytes)
    scores = np.unique(ref.loc[ref["class_id"] != 14, "score"].to_numpy())
    mid = len(scores) // 2  # about half the findings go, half stay; the written scores are rounded,
    conf = float(scores[mid - 1] + scores[mid]) / 2  # so conf lies between two of them
    for name, extra in {"all": (), "conf": ("--conf", conf)}.items():
        assert infer(pipe, "--cache", d / "test.h5", "--vis-dir", tmp_path / name, "--vis-conf", 0,
                     "--out", tmp_path / f"{name}.csv", *extra) == 0
    got = read_submission(tmp_path / "conf.csv")
    findings, kept = got[got["class_id"] != 14], ref[(ref["class_id"] != 14) & (ref["score"] >= conf)]
    assert 0 < len(findings) < (ref["class_id"] != 14).sum()
    assert (findings["score"] >= conf).all()
    cols = ["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"]
    pd.testing.assert_frame_equal(findings[cols].reset_index(drop=True), kept[cols].reset_index(drop=True))
    pd.testing.assert_frame_equal(got.loc[got["class_id"] == 14, cols].reset_index(drop=True),
                                  ref.loc[ref["class_id"] == 14, cols].reset_index(drop=True))
    assert sorted(pd.read_csv(tmp_path / "conf.csv", dtype={"image_id": str})["image_id"]) == sorted(pipe["sizes"])
    for png in sorted((tmp_path / "all").glob("*.png")):  # drawing has its own threshold (--vis-conf)
        assert (tmp_path / "conf" / png.name).read_bytes() == png.read_bytes()
    with pytest.raises(SystemExit) as e:
        infer(pipe, "--cache", d / "test.h5", "--vis-min-score", 0.2, "--out", tmp_path / "old.csv")
    assert e.value.code == 2 and "--vis-min-score 0.2: renamed to --vis-conf 0.2" in capsys.readouterr().err
    assert infer(pipe, "--cache", d / "test.h5", "--conf", 1.5, "--out", tmp_path / "bad.csv") == 2
    assert "--conf is a minimum score in [0, 1], got 1.5" in capsys.readouterr().err
