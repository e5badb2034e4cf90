"""cxrdet evaluate: table, JSON, PNGs, image-level AUC, bad input, and no torch import."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cxrdet.cli import main as cli_main

GT = """image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
a,Aortic enlargement,0,R1,10,10,50,50
a,Cardiomegaly,3,R1,100,100,300,250
b,Aortic enlargement,0,R2,20,20,60,60
b,Aortic enlargement,0,R3,22,20,62,60
c,No finding,14,R1,,,,
c,No finding,14,R2,,,,
d,No finding,14,R1,,,,
"""
# a: both findings found; b: one of the two readers' boxes found plus a false positive;
# c: normal, called normal; d: normal, no row at all (a warning, counts as no detections).
PRED = """image_id,PredictionString
a,0 0.9 10 10 50 50 3 0.8 105 100 300 250 14 0.1 0 0 1 1
b,0 0.7 20 20 60 60 0 0.95 400 400 450 450
c,14 0.9 0 0 1 1
"""
IMAGE_LEVEL = """image_id,p_abnormal,p_0,p_1,p_2,p_3,p_4,p_5,p_6,p_7,p_8,p_9,p_10,p_11,p_12,p_13
a,0.9,0.9,0,0,0.8,0,0,0,0,0,0,0,0,0,0
b,0.8,0.95,0,0,0.1,0,0,0,0,0,0,0,0,0,0
c,0.1,0.05,0,0,0.3,0,0,0,0,0,0,0,0,0,0
d,0.85,0.01,0,0,0.2,0,0,0,0,0,0,0,0,0,0
"""


@pytest.fixture
def files(tmp_path):
    paths = {}
    for name, text in [("gt", GT), ("pred", PRED), ("il", IMAGE_LEVEL)]:
        paths[name] = tmp_path / f"{name}.csv"
        paths[name].write_text(text)
    return paths


def run(files, tmp_path, *extra):
    out = tmp_path / "report.json"
    code = cli_main(["evaluate", "--gt", str(files["gt"]), "--pred", str(files["pred"]),
                     "--json", str(out), *extra])
    return code, (json.loads(out.read_text()) if out.exists() else None)


def test_json_golden_values_and_table(files, tmp_path, capsys):
    code, report = run(files, tmp_path)
    assert code == 0
    # class 0: ranked FP 0.95, TP 0.9 (a), TP 0.7 (b), 3 boxes: precision 0, 1/2, 2/3 at
    # recall 0, 1/3, 2/3; the envelope is 2/3 up to recall 2/3 -> AP = 4/9
    assert report["per_class"]["0"] == pytest.approx(4 / 9)
    assert report["per_class"]["3"] == 1.0
    # class 14: c (0.9, TP) ranks above a's 0.1 FP; d never predicted -> 1/2 * 1 = 0.5
    assert report["per_class"]["14"] == pytest.approx(0.5)
    assert report["per_class"]["5"] is None
    assert report["map"] == pytest.approx((4 / 9 + 1 + 0.5) / 3)
    assert report["map_no14"] == pytest.approx((4 / 9 + 1) / 2)
    assert report["n_images"] == 4 and report["n_gt"]["0"] == 3 and report["n_det"]["0"] == 3
    captured = capsys.readouterr()
    assert "Aortic enlargement" in captured.out and "0.4444" in captured.out
    assert "1 ground-truth image(s) have no prediction row" in captured.err


def test_image_level_auc(files, tmp_path, capsys):
    code, report = run(files, tmp_path, "--image-level", str(files["il"]))
    assert code == 0
    auc = report["image_auc"]
    assert auc["per_class"]["0"] == 1.0  # a, b (0.9, 0.95) above c, d (0.05, 0.01)
    assert auc["per_class"]["3"] == 1.0  # a (0.8) above the rest
    assert auc["per_class"]["1"] is None  # no positive image
    assert auc["abnormal"] == pytest.approx(0.75)  # d (normal) 0.85 outranks b (0.8)
    assert auc["n_images"] == 4
    assert "AUC" in capsys.readouterr().out


def test_plots_are_written_and_not_blank(files, tmp_path):
    plot_dir = tmp_path / "plots"
    code, _ = run(files, tmp_path, "--plot-dir", str(plot_dir))
    assert code == 0
    from matplotlib.image import imread

    pngs = sorted(p.name for p in plot_dir.glob("*.png"))
    assert "pr_curves.png" in pngs and "ap_per_class.png" in pngs and "pr_00_aortic_enlargement.png" in pngs
    assert len(pngs) == 17
    for name in ("pr_curves.png", "ap_per_class.png", "pr_00_aortic_enlargement.png"):
        img = imread(plot_dir / name)
        assert img.shape[0] > 200 and img.shape[1] > 200 and float(np.std(img)) > 0.05


def test_fused_ground_truth_changes_the_score(files, tmp_path):
    # b's two readers' boxes fuse into one (IoU 0.905): class 0 has 2 boxes, both found.
    code, report = run(files, tmp_path, "--fuse-gt", "wbf", "--fuse-iou", "0.5")
    assert code == 0 and report["fuse_gt"] == "wbf"
    assert report["n_gt"]["0"] == 2
    assert report["per_class"]["0"] == pytest.approx(2 / 3)  # envelope 2/3 over recall 0..1


def test_voc_and_unmatched_matching_give_their_golden_aps(tmp_path):
    # Two overlapping readers' boxes A, B (IoU 0.82). The first detection is A itself; the second
    # overlaps A by 0.96 (taken) and B by 0.85. 'unmatched' gives it B: 2 TPs, AP 1. 'voc' sends it
    # to A, its best box, already taken: a false positive, so precision 1 only up to recall 1/2.
    gt = tmp_path / "gt.csv"
    gt.write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
                  "x,Aortic enlargement,0,R1,0,0,100,100\nx,Aortic enlargement,0,R2,10,0,110,100\n")
    pred = tmp_path / "pred.csv"
    pred.write_text("image_id,PredictionString\nx,0 0.9 0 0 100 100 0 0.8 2 0 102 100\n")
    aps = {}
    for mode in ("unmatched", "voc"):
        out = tmp_path / f"{mode}.json"
        assert cli_main(["evaluate", "--gt", str(gt), "--pred", str(pred), "--match", mode, "--json", str(out)]) == 0
        aps[mode] = json.loads(out.read_text())["per_class"]["0"]
    assert aps == {"unmatched": pytest.approx(1.0), "voc": pytest.approx(0.5)}


@pytest.mark.parametrize("which, text, where", [
    ("pred", "image_id,PredictionString\na,0 0.9 10 10 50\n", ":2: "),
    ("pred", "image_id,PredictionString\na,14 1 0 0 1 1\nb,0 2 1 1 5 5\n", ":3: "),
    ("gt", "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\na,ILD,3,R1,1,1,5,5\n", ":2: "),
    ("il", "image_id,p_abnormal\na,0.5\n", "expected columns"),
])
def test_bad_input_exits_2_with_location(files, tmp_path, capsys, which, text, where):
    files[which].write_text(text)
    extra = ["--image-level", str(files["il"])] if which == "il" else []
    code, _ = run(files, tmp_path, *extra)
    assert code == 2
    err = capsys.readouterr().err
    assert str(files[which]) in err and where in err and "Traceback" not in err


def test_evaluate_does_not_import_torch(files, tmp_path):
    code = (
        "import sys; from cxrdet.cli import main; "
        f"rc = main(['evaluate', '--gt', {str(files['gt'])!r}, '--pred', {str(files['pred'])!r}, "
        f"'--image-level', {str(files['il'])!r}, '--json', {str(tmp_path / 'r.json')!r}]); "
        "print('RC', rc, 'TORCH', 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "RC 0 TORCH False" in out


def test_table_names_the_real_number_of_classes_with_ground_truth(files, tmp_path, capsys):
    assert run(files, tmp_path)[0] == 0
    out = capsys.readouterr().out
    # ground truth has classes 0, 3 and 14 only: the means are over 3 (and 2) classes, not 15
    assert "mAP@0.4 (3 classes with ground truth)" in out and "15 classes" not in out
    assert "mAP@0.4 without class 14 (2 classes)" in out
    from cxrdet.evaluate import format_table
    from cxrdet.metrics import summarize

    one = format_table(summarize(np.ones(1, bool), np.array([14]), np.ones(1), np.array([14]), 1))
    assert "(1 class with ground truth)" in one and "without class 14 (0 classes)" in one
