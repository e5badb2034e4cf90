"""Validation scores what `cxrdet infer` submits, and only the images it predicted; `cxrdet val`
reproduces the logged val_map of an exported run and agrees with `cxrdet infer` + `cxrdet evaluate`."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from cxrdet.cli import main as cli
from cxrdet.detections import Detections, detections_to_frame
from cxrdet.detector.config import DetectorConfig
from cxrdet.detector.data import DetectorDataModule, load_table
from cxrdet.detector.module import DetectorModule, with_no_finding
from cxrdet.formats.labels import read_labels
from cxrdet.inference.infer import Outputs, get_args_parser, process_batch
from cxrdet.inference.predictor import Predictor
from cxrdet.inference.sources import Sample
from cxrdet.metrics import MetricWarning, evaluate_detections

from detector_fixtures import CACHE, ORIG, cli_args, limit_threads, make_dataset, tiny_config

limit_threads()
LIGHT = dict(model="fasterrcnn_resnet18_fpn", min_size=CACHE, max_size=CACHE, anchor_sizes=[16, 32, 64, 128, 256])


class FixedOutput(nn.Module):
    """A 'detector' whose raw torchvision output (cache pixels, labels 1..14) is fixed."""

    def __init__(self, output: dict[str, torch.Tensor]):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # predict() asks the parameters for the device
        self.output = output

    def forward(self, images, targets=None):
        return [{k: v.clone() for k, v in self.output.items()} for _ in images]


def test_validation_and_infer_map_one_model_output_to_the_same_boxes():
    cache_hw, orig_hw = (60, 96), (1200, 1920)  # non-square; 20 original pixels per cache pixel
    raw = {
        "boxes": torch.tensor([[10.0, 5.0, 30.0, 25.0],     # inside
                               [-2.0, 40.0, 97.5, 61.0],    # over the left, right and bottom borders
                               [50.0, 10.0, 50.04, 20.0]]),  # 0.8 original pixels wide: dropped
        "scores": torch.tensor([0.9, 0.6, 0.5]),
        "labels": torch.tensor([1, 4, 9]),  # torchvision labels = class_id + 1
    }
    image = np.full(cache_hw, 90, np.uint8)
    module = DetectorModule(DetectorConfig(**LIGHT).to_dict())
    module.model = FixedOutput(raw).eval()
    target = {"image_id": "a", "orig_hw": torch.tensor(orig_hw)}
    with torch.no_grad():
        module.validation_step(([torch.from_numpy(image)], [target]), 0)
    val = Detections(*module._val_preds["a"])

    out = Outputs()
    args = get_args_parser().parse_args(["--model", "unused", "--cache", "unused", "--out", "unused"])
    process_batch([Sample("a", image, orig_hw, {}, {})], Predictor([FixedOutput(raw).eval()]), args, out)
    inf = out.predictions["a"]

    np.testing.assert_allclose(val.boxes, [[200, 100, 600, 500], [0, 800, 1920, 1200]])
    np.testing.assert_array_equal(val.class_ids, [0, 3])
    np.testing.assert_array_equal(val.boxes, inf.boxes)
    np.testing.assert_array_equal(val.scores, inf.scores)
    np.testing.assert_array_equal(val.class_ids, inf.class_ids)


class BrightRectangle(nn.Module):
    """A 'detector' that finds the fixtures' bright rectangles (class 0) exactly: known AP."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, images, targets=None):
        outputs = []
        for im in images:
            ys, xs = torch.nonzero(im[0] > 0.75, as_tuple=True)  # rectangles are 200, the rest <= 140
            found = len(xs) > 0
            box = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]] if found else torch.zeros(0, 4)
            outputs.append({"boxes": torch.as_tensor(box, dtype=torch.float32).reshape(-1, 4),
                            "scores": torch.full((int(found),), 0.9), "labels": torch.ones(int(found), dtype=torch.int64)})
        return outputs


class RecordingModule(DetectorModule):
    """Keeps the detections each validation scored (they are cleared at the epoch end)."""

    def score(self, per_image):
        self.scored = dict(per_image)
        return super().score(per_image)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("val") / "data", n_abnormal=6, n_normal=2, readers=2)


def test_limited_validation_scores_only_the_predicted_images(data, tmp_path):
    pl.seed_everything(0)
    cfg = tiny_config(data, tmp_path, val_batch_size=1)
    module = RecordingModule(cfg.to_dict())
    module.model = BrightRectangle()
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (res,) = trainer.validate(module, datamodule=DetectorDataModule(cfg), verbose=False)
    assert not [w for w in caught if issubclass(w.category, MetricWarning)]

    table = load_table(cfg)
    assert sorted(module.scored) == sorted(table.val_ids[:2])  # half of the 4 images of fold 0
    assert res["val_images"] == 2
    frame = detections_to_frame({k: with_no_finding(v) for k, v in module.scored.items()})
    only_those = table.val_gt[table.val_gt["image_id"].isin(module.scored)]
    expected = evaluate_detections(only_those, frame)
    assert not expected.warnings
    assert res["val_map"] == pytest.approx(expected.map, abs=1e-6)
    assert res["val_ap/00_Aortic_enlargement"] == pytest.approx(1.0)  # both predicted rectangles found
    # the whole fold's ground truth would count the 2 unpredicted images as missed: another number
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        whole = evaluate_detections(table.val_gt, frame, pred_image_ids=list(module.scored))
    assert whole.map != pytest.approx(expected.map, abs=1e-3)


def _fold_files(data, fold: int, out_dir) -> tuple[str, str]:
    """The fold's labels and a META.csv (original sizes) for `cxrdet evaluate --fuse-gt`."""
    folds = pd.read_csv(data["folds"], dtype={"image_id": str})
    ids = set(folds.loc[folds["fold"] == fold, "image_id"])
    labels = pd.read_csv(data["labels"], dtype={"image_id": str})
    labels_path, meta_path = out_dir / "fold_labels.csv", out_dir / "fold_meta.csv"
    labels[labels["image_id"].isin(ids)].to_csv(labels_path, index=False)
    pd.DataFrame({"image_id": sorted(ids), "rows": ORIG, "columns": ORIG}).to_csv(meta_path, index=False)
    assert len(read_labels(labels_path)["image_id"].unique()) == len(ids)
    return str(labels_path), str(meta_path)


@pytest.mark.slow
def test_val_reproduces_the_logged_val_map_and_infer_plus_evaluate(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(cli_args(data, run, "--epochs", "1", "--devices", "1", "--limit-train-batches", "2")) == 0
    logged = pd.concat([pd.read_csv(f) for f in sorted(run.glob("logs/version_*/metrics.csv"))])
    val_map = float(logged["val_map"].dropna().iloc[-1])  # one epoch: the weights best.ckpt exported
    capsys.readouterr()

    common = ["--cache", str(data["cache"]), "--folds", str(data["folds"]), "--fold", "0", "--device", "cpu"]
    assert cli(["val", "--model", str(run / "export"), "--labels", str(data["labels"]), *common,
                "--json", str(tmp_path / "val.json")]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "val.json").read_text())
    assert report["map"] == pytest.approx(val_map, abs=1e-6)
    assert f"{report['map']:10.4f}" in printed and "4 ground-truth images" in printed  # evaluate's table

    sub = tmp_path / "sub.csv"
    assert cli(["infer", "--model", str(run / "export"), *common, "--batch-size", "2", "--workers", "0",
                "--out", str(sub)]) == 0
    labels, meta = _fold_files(data, 0, tmp_path)
    assert cli(["evaluate", "--gt", labels, "--pred", str(sub), "--fuse-gt", "wbf", "--fuse-iou", "0.5",
                "--meta", meta, "--json", str(tmp_path / "eval.json")]) == 0
    scored = json.loads((tmp_path / "eval.json").read_text())
    # infer without a gate submits no class-14 rows; every finding class must agree exactly
    assert scored["map_no14"] == pytest.approx(report["map_no14"], abs=1e-9)
    for c in range(14):
        assert scored["per_class"][str(c)] == report["per_class"][str(c)], c
    assert scored["n_gt"] == report["n_gt"]
