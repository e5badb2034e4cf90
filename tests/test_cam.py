"""Grad-CAM heatmaps: golden values of the localisation maths, the heatmap file, and end to end a
small classifier whose heatmaps point inside the synthetic lesion of its class on held-out
images clearly more often than chance (classify --cam-dir --cam-raw -> evaluate-classifier --cam)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from cxrdet.classifier.cam import CamClasses, parse_cam_classes
from cxrdet.classifier.heatmap_boxes import covered_share, heatmap_boxes, peak, pointing_hit
from cxrdet.cli import main as cli
from cxrdet.errors import UserError
from cxrdet.formats.heatmaps import HeatmapRecord, HeatmapWriter, read_heatmaps
from cxrdet.inference.cam_pictures import cam_picture, cam_picture_path

from classifier_fixtures import LOCAL_CACHE, limit_threads, make_localised, train_args

limit_threads()


def hand_made() -> np.ndarray:
    """A 40 x 60 heatmap: a strong 6 x 4 blob, a weaker 3 x 3 one, a 1-pixel speck."""
    h = np.zeros((40, 60), np.float32)
    h[10:14, 20:26] = 1.0  # rows 10-13, cols 20-25 -> box (20, 10, 26, 14)
    h[30:33, 50:53] = 0.6  # above half the maximum -> box (50, 30, 53, 33)
    h[2, 2] = 0.9  # one pixel: below min_area
    h[25:28, 5:8] = 0.4  # below half the maximum
    return h


def test_heatmap_boxes_golden():
    boxes = heatmap_boxes(hand_made(), threshold=0.5, min_area=4)
    assert boxes.tolist() == [[20, 10, 26, 14], [50, 30, 53, 33]]
    assert heatmap_boxes(hand_made(), threshold=0.5, min_area=1).tolist() == [[2, 2, 3, 3], [20, 10, 26, 14], [50, 30, 53, 33]]
    assert heatmap_boxes(hand_made(), threshold=0.3, min_area=4).tolist() == [[20, 10, 26, 14], [5, 25, 8, 28], [50, 30, 53, 33]]
    assert heatmap_boxes(np.zeros((8, 8)), 0.5).shape == (0, 4)
    with pytest.raises(ValueError):
        heatmap_boxes(hand_made(), threshold=0.0)


def test_peak_pointing_and_chance_golden():
    h = hand_made()
    assert peak(h) == (23.0, 12.0)  # centre of the 6 x 4 plateau
    assert pointing_hit(h, np.array([[20, 10, 26, 14]]))
    assert pointing_hit(h, np.array([[0, 0, 5, 5], [22, 11, 24, 13]]))
    assert not pointing_hit(h, np.array([[50, 30, 53, 33]]))
    corner = np.zeros((16, 16))
    corner[:4, 12:] = 1.0  # a flat corner block, as upsampling makes of a border cell
    assert peak(corner) == (14.0, 2.0)
    assert covered_share(np.array([[0, 0, 30, 20]]), (40, 60)) == pytest.approx(600 / 2400)
    # the union counts overlap once
    assert covered_share(np.array([[0, 0, 10, 10], [5, 5, 15, 15]]), (20, 20)) == pytest.approx(175 / 400)


def test_cam_classes():
    names = ["Aortic enlargement", "Cardiomegaly", "Nodule/Mass", "abnormal"]
    probs = np.array([0.2, 0.7, 0.1, 0.9])
    assert parse_cam_classes("top2", names).choose(probs, names) == [1, 0]  # "abnormal" left out of topK
    assert parse_cam_classes("all", names).choose(probs, names) == [0, 1, 2, 3]
    assert parse_cam_classes("3, Cardiomegaly,1", names) == CamClasses(top=None, fixed=(3, 1))
    for bad in ("top0", "7", "Pneumonia"):
        with pytest.raises(UserError, match="cam-classes"):
            parse_cam_classes(bad, names)


def test_heatmap_file_round_trip_and_refusals(tmp_path):
    path = tmp_path / "h.h5"
    w = HeatmapWriter(path, ["a", "b"], "GradCAM", [{"dir": "x"}])
    w.add(HeatmapRecord("img/../x", (300, 200), [1, 0], [0.8, 0.1], np.stack([hand_made(), hand_made() / 2])))
    assert not path.exists()  # published only by close()
    w.close()
    names, records = read_heatmaps(path)
    (rec,) = list(records)
    assert names == ["a", "b"] and rec.image_id == "img/../x" and rec.orig_hw == (300, 200)
    assert rec.class_ids == [1, 0] and rec.probability == pytest.approx([0.8, 0.1])
    assert np.allclose(rec.heatmaps[1], hand_made() / 2, atol=1e-3)
    with h5py.File(path, "a") as f:
        f["images/0"].attrs["class_ids"] = np.array([1, 5])
    with pytest.raises(UserError, match="class ids"):
        list(read_heatmaps(path)[1])
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="not an HDF5 file"):
        read_heatmaps(tmp_path / "junk.h5")


def test_picture_keeps_the_aspect_ratio_and_names_stay_inside(tmp_path):
    image = np.full((100, 60), 90, np.uint8)
    heat = np.zeros((100, 60), np.float32)
    heat[10:20, 40:50] = 1
    pic = cam_picture(image, heat, "Cardiomegaly p=0.71")
    assert pic.shape[2] == 3 and pic.shape[0] / pic.shape[1] == pytest.approx(100 / 60, rel=0.01)
    hot = pic[int(15 * pic.shape[0] / 100), int(45 * pic.shape[1] / 60)]
    assert hot[2] > hot[0]  # red (BGR) where the heatmap is 1, over a grey image
    assert cam_picture_path(tmp_path, "img1", 3).name == "img1_cam03.png"
    with pytest.raises(UserError):
        cam_picture_path(tmp_path, "../evil", 3)


@pytest.fixture(scope="module")
def localised(tmp_path_factory):
    root = tmp_path_factory.mktemp("cam")
    data = make_localised(root / "data")
    args = train_args(data, root / "run", "--epochs", "8")
    args[args.index("--size") + 1] = str(LOCAL_CACHE)
    assert cli(args) == 0
    return data, root / "run" / "export"


@pytest.mark.slow
def test_heatmaps_point_at_the_lesion_more_often_than_chance(localised, tmp_path):
    data, model = localised
    cams = tmp_path / "cams"
    assert cli(["classify", "--model", str(model), "--cache", str(data["cache"]), "--folds", str(data["folds"]),
                "--fold", "0", "--workers", "0", "--cam-dir", str(cams), "--cam-raw", "--cam-classes",
                "Aortic enlargement,Cardiomegaly", "--out", str(tmp_path / "probs.csv")]) == 0
    pictures = sorted(cams.glob("*_cam*.png"))
    assert len(pictures) == 2 * 60 and {p.name[-9:] for p in pictures} == {"cam00.png", "cam03.png"}
    assert cv2.imread(str(pictures[0])).shape[:2] == (768, 768)  # enlarged, square like the original
    assert cli(["evaluate-classifier", "--labels", str(data["labels"]), "--probs", str(tmp_path / "probs.csv"),
                "--cam", str(cams / "heatmaps.h5"), "--out", str(tmp_path / "eval"), "--bootstrap", "0"]) == 0
    report = json.loads((tmp_path / "eval/metrics.json").read_text())["cam"]
    pg = report["pointing_game"]
    square = pg["per_class"]["Aortic enlargement"]
    assert square["pairs"] >= 20 and square["chance"] == pytest.approx(0.0244, abs=0.001)
    assert square["hit_rate"] >= 0.2 >= 5 * square["chance"], square  # the bright square is found
    assert pg["overall"]["hit_rate"] >= 4 * pg["overall"]["chance"], pg["overall"]
    boxes = (tmp_path / "eval/cam_boxes.csv").read_text().splitlines()
    assert boxes[0] == "image_id,class_id,score,x_min,y_min,x_max,y_max" and len(boxes) > 30
    assert (tmp_path / "eval/plots/pointing_game.png").stat().st_size > 5000
    assert 0.0 <= report["heatmap_box_map"]["map_no14"] <= 1.0


def test_cam_flags_are_checked_before_any_work(localised, tmp_path, capsys):
    data, model = localised
    base = ["classify", "--model", str(model), "--cache", str(data["cache"]), "--workers", "0",
            "--out", str(tmp_path / "p.csv")]
    assert cli([*base, "--cam-raw"]) == 2
    assert cli([*base, "--cam-dir", str(tmp_path / "c"), "--cam-classes", "Pneumonia"]) == 2
    err = capsys.readouterr().err
    assert "--cam-raw needs --cam-dir" in err and "'Pneumonia' is neither" in err and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()


def test_a_heatmap_file_that_makes_libhdf5_loop_is_refused(tmp_path, monkeypatch):
    """Found by fuzzing (benchmarks/fuzz_readers.py, seed 0, example 1513): libhdf5 reads one attribute
    of this damaged file forever. The child-process walk times out and the file is refused."""
    import time

    import cxrdet.formats.heatmaps as heatmaps

    monkeypatch.setattr(heatmaps, "PROBE_SECONDS", 3.0)
    damaged = Path(__file__).parent / "data" / "heatmaps_libhdf5_loops.h5"
    start = time.perf_counter()
    with pytest.raises(UserError, match="did not finish reading this file in 3 s"):
        read_heatmaps(damaged)
    assert time.perf_counter() - start < 30
