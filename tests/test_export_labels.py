"""cxrdet export-labels: COCO / YOLO files hold exactly the fused boxes the detector trains on."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from pycocotools.coco import COCO

from cxrdet.cli import main as cli
from cxrdet.classes import CLASS_NAMES, NO_FINDING
from cxrdet.ecosystem.export_labels import write_images
from cxrdet.errors import UserError
from cxrdet.formats.folds import read_folds
from cxrdet.formats.labels import read_labels
from cxrdet.fusion import fuse_readers
from cxrdet.preprocess.cache import CacheReader
from detector_fixtures import CACHE, ORIG, make_dataset

COORDS = ["x_min", "y_min", "x_max", "y_max"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    # two readers with jittered boxes: WBF moves every box, so a reimplementation would show
    return make_dataset(tmp_path_factory.mktemp("export"), n_abnormal=5, n_normal=3, readers=2)


def expected_boxes(data, method="wbf", iou=0.5) -> dict[str, list[tuple]]:
    """Fused readers' boxes (independent of the exporter), in cache pixels, per image."""
    fused = fuse_readers(read_labels(data["labels"]), method=method, iou_thr=iou,
                         image_sizes={i: (ORIG, ORIG) for i in read_folds(data["folds"])})
    out: dict[str, list[tuple]] = {}
    for image_id, g in fused.groupby("image_id"):
        g = g[g["class_id"] != NO_FINDING]
        out[image_id] = sorted((int(c), *(np.asarray(b) * CACHE / ORIG)) for c, *b in
                               g[["class_id", *COORDS]].itertuples(index=False))
    return out


def assert_same(got: list[tuple], want: list[tuple], tol: float) -> None:
    assert len(got) == len(want)
    for g, w in zip(sorted(got), want):
        assert g[0] == w[0]
        np.testing.assert_allclose(g[1:], w[1:], atol=tol)


def run_export(data, out: Path, fmt: str, *extra: str) -> int:
    return cli(["export-labels", "--labels", str(data["labels"]), "--folds", str(data["folds"]), "--fold", "1",
                "--cache", str(data["cache"]), "--format", fmt, "--out", str(out), *extra])


def test_coco_export_loads_in_pycocotools_and_holds_the_fused_boxes(data, tmp_path):
    assert run_export(data, tmp_path / "coco", "coco") == 0
    folds, want = read_folds(data["folds"]), expected_boxes(data)
    seen = set()
    for split in ("train", "val"):
        coco = COCO(str(tmp_path / "coco" / "annotations" / f"instances_{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASS_NAMES[:14])
        assert sorted(coco.getCatIds()) == list(range(14))
        for img in coco.loadImgs(coco.getImgIds()):
            image_id = img["file_name"][:-4]
            seen.add(image_id)
            assert (folds[image_id] == 1) == (split == "val")
            png = cv2.imread(str(tmp_path / "coco" / "images" / split / img["file_name"]), cv2.IMREAD_UNCHANGED)
            with CacheReader(data["cache"]) as reader:
                np.testing.assert_array_equal(png, reader.read(image_id)[0])
            assert (img["height"], img["width"]) == png.shape
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
            got = [(a["category_id"], a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                    a["bbox"][1] + a["bbox"][3]) for a in anns]
            assert_same(got, want[image_id], tol=2e-3)
    assert seen == set(folds)
    normals = [i for i, boxes in want.items() if not boxes]
    assert len(normals) == 3  # the no-finding images are there, with no annotation (checked above)


def test_yolo_export_holds_normalised_fused_boxes_and_a_data_yaml(data, tmp_path):
    out = tmp_path / "yolo"
    assert run_export(data, out, "yolo", "--fusion", "nms", "--fusion-iou", "0.4") == 0
    spec = yaml.safe_load((out / "data.yaml").read_text())
    assert spec["names"] == {i: n for i, n in enumerate(CLASS_NAMES[:14])} and spec["nc"] == 14
    assert (spec["train"], spec["val"]) == ("images/train", "images/val") and Path(spec["path"]) == out.resolve()
    folds, want = read_folds(data["folds"]), expected_boxes(data, "nms", 0.4)
    for image_id, fold in folds.items():
        split = "val" if fold == 1 else "train"
        assert (out / "images" / split / f"{image_id}.png").is_file()
        text = (out / "labels" / split / f"{image_id}.txt").read_text()
        got = []
        for line in text.splitlines():
            c, cx, cy, w, h = line.split()
            cx, cy, w, h = (float(v) * CACHE for v in (cx, cy, w, h))  # square cache images
            got.append((int(c), cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        assert_same(got, want[image_id], tol=1e-3)
        assert (text == "") == (not want[image_id])  # no finding: an empty label file


def test_unsafe_image_id_and_non_empty_out_are_refused(data, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("old")
    assert run_export(data, tmp_path / "busy", "coco") == 2
    assert "not an empty folder" in capsys.readouterr().err
    # ids are data: one that would escape the images folder stops the export before any file is written
    with pytest.raises(UserError, match="cannot be used as a file name"):
        write_images(str(data["cache"]), {"train": ["img000", "../img001"], "val": []}, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_label_formats_golden_on_a_non_square_image():
    from cxrdet.ecosystem.label_formats import coco_dataset, yolo_lines

    boxes, cls = np.array([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 200.0, 100.0]]), np.array([3, 13])
    # 100 rows x 200 columns: x is normalised by 200, y by 100
    assert yolo_lines(boxes, cls, (100, 200)) == ("3 0.150000 0.400000 0.200000 0.400000\n"
                                                 "13 0.500000 0.500000 1.000000 1.000000\n")
    assert yolo_lines(np.zeros((0, 4)), np.zeros(0), (100, 200)) == ""
    coco = coco_dataset(["a", "n"], {"a": (boxes, cls), "n": (np.zeros((0, 4)), np.zeros(0))},
                        {"a": (100, 200), "n": (80, 90)}, {"x": 1})
    assert coco["images"] == [{"id": 1, "file_name": "a.png", "height": 100, "width": 200, "cxrdet_image_id": "a"},
                              {"id": 2, "file_name": "n.png", "height": 80, "width": 90, "cxrdet_image_id": "n"}]
    assert [(a["image_id"], a["category_id"], a["bbox"], a["area"]) for a in coco["annotations"]] == [
        (1, 3, [10.0, 20.0, 40.0, 40.0], 1600.0), (1, 13, [0.0, 0.0, 200.0, 100.0], 20000.0)]
