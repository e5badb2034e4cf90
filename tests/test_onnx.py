"""ONNX export + onnxruntime: the same detections as PyTorch, the config travels inside the file."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrdet.cli import main as cli
from cxrdet.detections import detections_from_frame
from cxrdet.detector.export import load_detector, write_artifact
from cxrdet.detector.model import build_detector
from cxrdet.detector.predict import predict
from cxrdet.ecosystem.onnx_export import max_differences
from cxrdet.formats.submission import read_submission
from cxrdet.inference.runtime import OnnxPredictor
from cxrdet.preprocess.cache import CacheReader
from detector_fixtures import CACHE, limit_threads, make_dataset, tiny_config


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A seeded light detector as an artifact (no training: at score_thresh 0.001 an untrained
    15-way head scores ~1/15 everywhere, so it returns its full 100 detections) and its ONNX file."""
    limit_threads()
    root = tmp_path_factory.mktemp("onnx")
    data = make_dataset(root / "data", n_abnormal=3, n_normal=1)
    cfg = dataclasses.replace(tiny_config(data, root / "run", detections_per_img=100), cache_size=CACHE,
                              cache_voi="auto")
    torch.manual_seed(0)
    artifact = write_artifact(build_detector(cfg).state_dict(), cfg, root / "run" / "export")
    onnx_file = root / "model.onnx"
    assert cli(["export-onnx", "--model", str(artifact), "--out", str(onnx_file)]) == 0
    return {**data, "artifact": artifact, "onnx": onnx_file, "root": root}


def test_onnxruntime_gives_the_pytorch_detections(exported):
    model, cfg = load_detector(exported["artifact"])
    predictor = OnnxPredictor(exported["onnx"], threads=1)
    assert predictor.config.to_dict() == cfg.to_dict()
    with CacheReader(exported["cache"]) as reader:
        images = [reader.read(i)[0] for i in reader.ids[:2]]
    # non-square (portrait and landscape): cache images keep their aspect; the graph has dynamic axes
    images += [np.ascontiguousarray(images[0][:, : CACHE * 3 // 4]), np.ascontiguousarray(images[1][: CACHE // 2])]
    # PyTorch per image: a batch would pad the non-square ones to a common size (other detections)
    for ref, got in zip([predict(model, [im])[0] for im in images], predictor.predict(images)):
        assert len(ref) == cfg.detections_per_img
        box, score = max_differences(ref, got)
        assert box <= 1.0 and score <= 1e-3
        assert set(got.class_ids.tolist()) <= set(range(14)) and np.all(np.diff(got.scores) <= 0)


def test_max_differences_catches_a_moved_box(exported):
    model, _ = load_detector(exported["artifact"])
    with CacheReader(exported["cache"]) as reader:
        ref = predict(model, [reader.read(reader.ids[0])[0]])[0]
    moved = ref.select(np.ones(len(ref), bool))
    moved.boxes[5] += 3.0
    assert max_differences(ref, moved)[0] >= 3.0 - 1e-9
    assert max_differences(ref, ref.select(np.arange(len(ref)) > 0)) == (float("inf"), float("inf"))


def test_infer_runtime_onnx_writes_the_torch_submission(exported, tmp_path):
    base = ["infer", "--cache", str(exported["cache"]), "--workers", "0", "--batch-size", "2", "--device", "cpu"]
    assert cli([*base, "--model", str(exported["artifact"]), "--out", str(tmp_path / "torch.csv")]) == 0
    assert cli([*base, "--runtime", "onnx", "--model", str(exported["onnx"]), "--out", str(tmp_path / "onnx.csv")]) == 0
    ref, got = read_submission(tmp_path / "torch.csv"), read_submission(tmp_path / "onnx.csv")
    assert sorted(set(ref["image_id"])) == sorted(set(got["image_id"])) and len(ref) == len(got)
    for image_id, r in detections_from_frame(ref).items():
        box, score = max_differences(r, detections_from_frame(got)[image_id])
        assert box <= 2.0 and score <= 1e-3  # original pixels = 2x cache pixels


def test_a_config_that_disagrees_with_the_onnx_file_is_refused(exported, tmp_path, capsys):
    folder = tmp_path / "deploy"
    folder.mkdir()
    shutil.copy(exported["onnx"], folder / "model.onnx")
    values = json.loads((exported["artifact"] / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(values))
    assert OnnxPredictor(folder).config.score_thresh == values["score_thresh"]  # agreeing config: fine
    values["score_thresh"] = 0.5
    (folder / "config.json").write_text(json.dumps(values))
    code = cli(["infer", "--cache", str(exported["cache"]), "--runtime", "onnx", "--model", str(folder),
                "--workers", "0", "--out", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "disagree" in err and "score_thresh: 0.001 in the ONNX file, 0.5 in config.json" in err
    assert not (tmp_path / "s.csv").exists()


def test_a_foreign_onnx_file_is_refused(exported, tmp_path, capsys):
    import onnx

    graph = onnx.load(str(exported["onnx"]))
    del graph.metadata_props[:]
    onnx.save(graph, str(tmp_path / "plain.onnx"))
    code = cli(["infer", "--cache", str(exported["cache"]), "--runtime", "onnx", "--model",
                str(tmp_path / "plain.onnx"), "--workers", "0", "--out", str(tmp_path / "s.csv")])
    assert code == 2 and "only files written by `cxrdet export-onnx`" in capsys.readouterr().err


def test_an_export_that_does_not_reproduce_pytorch_is_removed(exported, tmp_path, monkeypatch, capsys):
    from cxrdet.ecosystem import onnx_export

    monkeypatch.setattr(onnx_export, "SCORE_TOL", -1.0)  # any difference, even 0, now counts as a mismatch
    out = tmp_path / "m.onnx"
    assert cli(["export-onnx", "--model", str(exported["artifact"]), "--out", str(out)]) == 2
    assert "does not reproduce PyTorch" in capsys.readouterr().err and not out.exists()
