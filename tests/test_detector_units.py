"""Detector pieces without training: transforms, sampler, schedule, config, model building,
weight loading, predict, the export artifact, and the training command's decisions (resume,
settings locked on resume, SyncBatchNorm)."""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest
import torch
from torchvision.models import resnet18
from torchvision.ops.misc import FrozenBatchNorm2d

from cxrdet.detector.config import DetectorConfig
from cxrdet.detector.data import EpochSampler, collate
from cxrdet.detector.export import load_detector, write_artifact
from cxrdet.detector.model import build_detector, load_pretrained, read_state_dict
from cxrdet.detector.module import warmup_cosine, with_no_finding
from cxrdet.detector.predict import predict
from cxrdet.detector.resume import find_checkpoint
from cxrdet.cli import main as cli_main
from cxrdet.detector.train import (
    _devices,
    apply_sync_batchnorm,
    get_args_parser,
    resolve_config,
    sync_batchnorm_decision,
)
from cxrdet.detector.transforms import AugmentSettings, augment, color_lut, crop, hflip, to_model_input
from cxrdet.detections import Detections
from cxrdet.errors import UserError

from detector_fixtures import CACHE, limit_threads

limit_threads()

LIGHT = dict(model="fasterrcnn_resnet18_fpn", min_size=CACHE, max_size=CACHE, anchor_sizes=[16, 32, 64, 128, 256])


# ---------------------------------------------------------------- transforms
def test_hflip_moves_pixels_and_boxes_together():
    image = np.zeros((4, 10), np.uint8)
    image[1:3, 1:4] = 255  # columns 1..3 -> box x 1..4
    out, boxes = hflip(image, np.array([[1.0, 1.0, 4.0, 3.0]]))
    assert np.array_equal(boxes, [[6.0, 1.0, 9.0, 3.0]])
    cols = np.flatnonzero(out.any(axis=0))
    assert (cols.min(), cols.max() + 1) == (6, 9)


def test_crop_shifts_clips_and_drops_boxes():
    image = np.arange(100, dtype=np.uint8).reshape(10, 10)
    boxes = np.array([[2.0, 2.0, 6.0, 6.0],  # fully inside the window
                      [0.0, 0.0, 4.0, 4.0],  # 4 of 16 px visible (25%) -> dropped at 30%
                      [5.0, 5.0, 9.0, 7.0]])  # clipped to x<=8
    labels = np.array([1, 2, 3])
    out, b, lab = crop(image, boxes, labels, (2, 2, 8, 8), min_visible=0.3, min_box_size=1.0)
    assert out.shape == (6, 6) and out[0, 0] == image[2, 2]
    assert np.allclose(b, [[0, 0, 4, 4], [3, 3, 6, 5]])
    assert lab.tolist() == [1, 3]


def test_color_lut_neutral_is_identity_and_gamma_darkens():
    assert np.array_equal(color_lut(0.0, 1.0, 1.0), np.arange(256))
    dark = color_lut(0.0, 1.0, 2.0)
    assert dark[128] < 128 and dark[0] == 0 and dark[255] == 255


def test_augment_is_deterministic_and_keeps_boxes_inside():
    rng0 = np.random.default_rng(1)
    image = rng0.integers(0, 255, (40, 60), dtype=np.uint8)
    boxes = np.array([[5.0, 5.0, 30.0, 20.0], [40.0, 10.0, 59.0, 39.0]])
    labels = np.array([1, 4])
    s = AugmentSettings(hflip_prob=0.5, crop_prob=1.0, color_prob=1.0)
    a = augment(image, boxes, labels, np.random.default_rng(7), s)
    b = augment(image, boxes, labels, np.random.default_rng(7), s)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for seed in range(30):
        im, bx, lab = augment(image, boxes, labels, np.random.default_rng(seed), s)
        h, w = im.shape
        assert len(bx) == len(lab)
        assert (bx[:, 0] >= 0).all() and (bx[:, 2] <= w).all() and (bx[:, 1] >= 0).all() and (bx[:, 3] <= h).all()
        assert ((bx[:, 2] - bx[:, 0]) >= s.min_box_size).all()


def test_to_model_input_repeats_grey_to_three_channels():
    x = to_model_input(torch.full((5, 7), 255, dtype=torch.uint8))
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32 and torch.all(x == 1.0)
    with pytest.raises(ValueError):
        to_model_input(torch.zeros(2, 5, 7))


# ---------------------------------------------------------------- sampler, collate, schedule
def test_epoch_sampler_normal_share_determinism_and_shards():
    pos, neg = list(range(6)), list(range(6, 30))
    s = EpochSampler(pos, neg, normal_fraction=0.25, seed=3)
    order = [i for i, _ in s]
    assert len(order) == 8 and set(pos) <= set(order)  # 6 positives + round(6*0.25/0.75)=2 normals
    assert order == [i for i, _ in EpochSampler(pos, neg, 0.25, seed=3)]
    s.set_epoch(1)
    assert [i for i, _ in s] != order
    assert len(list(EpochSampler(pos, neg, -1, seed=3))) == 30  # <0: every image
    shards = [list(EpochSampler(pos, neg, 0.25, 3, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(x) for x in shards] == [3, 3, 3]  # 8 padded to 9
    merged = sorted(i for shard in shards for i, _ in shard)
    assert set(merged) == set(order) and len(merged) == 9
    seeds = [sd for shard in shards for _, sd in shard]
    assert len(set(seeds)) == 9  # each position has its own augmentation seed


def test_collate_keeps_lists():
    images, targets = collate([(torch.zeros(3, 4), {"a": 1}), (torch.zeros(5, 4), {"a": 2})])
    assert [im.shape[0] for im in images] == [3, 5] and [t["a"] for t in targets] == [1, 2]


def test_warmup_cosine_golden_values():
    assert warmup_cosine(0, 100, 10, 0.001, 0.0) == pytest.approx(0.001)
    assert warmup_cosine(5, 100, 10, 0.001, 0.0) == pytest.approx(0.5005)
    assert warmup_cosine(10, 100, 10, 0.001, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 0.001, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, 0.001, 0.1) == pytest.approx(0.1)


def test_no_finding_score_is_one_minus_max_finding():
    det = Detections(np.array([[0, 0, 5, 5], [1, 1, 4, 4]]), np.array([0.3, 0.8]), np.array([2, 5]))
    out = with_no_finding(det)
    assert out.class_ids.tolist() == [2, 5, 14] and out.scores[-1] == pytest.approx(0.2)
    assert out.boxes[-1].tolist() == [0, 0, 1, 1]
    assert with_no_finding(Detections.empty()).scores.tolist() == [1.0]


# ---------------------------------------------------------------- config
def test_config_json_round_trip_and_checks(tmp_path):
    cfg = DetectorConfig(lr=0.02, anchor_sizes=[8, 16, 32, 64, 128])
    path = cfg.save(tmp_path / "c.json")
    assert DetectorConfig.load(path) == cfg
    assert json.loads(path.read_text())["anchor_sizes"] == [8, 16, 32, 64, 128]
    with pytest.raises(UserError, match="model"):
        DetectorConfig.from_dict({"model": "yolo"})
    with pytest.raises(UserError, match="unknown detector config keys"):
        DetectorConfig.from_dict({"lerning_rate": 1.0})


# ---------------------------------------------------------------- model building
def test_default_model_is_r50_fpn_with_15_outputs_and_scratch_bn():
    m = build_detector(DetectorConfig())
    assert m.roi_heads.box_predictor.cls_score.out_features == 15
    assert m.roi_heads.detections_per_img == 300 and m.roi_heads.score_thresh == pytest.approx(0.001)
    assert isinstance(m.backbone.body.bn1, torch.nn.BatchNorm2d)
    assert all(p.requires_grad for p in m.parameters())  # from scratch everything trains
    assert m.backbone.body.layer3[5] is not None  # ResNet-50: 6 blocks in layer3


def test_pretrained_model_freezes_bn_and_early_layers():
    m = build_detector(DetectorConfig(backbone_weights="x.pth", trainable_layers=2))
    body = m.backbone.body
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not body.conv1.weight.requires_grad and not body.layer2[0].conv1.weight.requires_grad
    assert body.layer3[0].conv1.weight.requires_grad and body.layer4[0].conv1.weight.requires_grad
    v2 = build_detector(DetectorConfig(model="fasterrcnn_resnet50_fpn_v2", weights="x.pth"))
    assert isinstance(v2.backbone.body.bn1, torch.nn.BatchNorm2d)  # v2 keeps BN, as torchvision does


# ---------------------------------------------------------------- weight loading
def test_detector_weights_with_other_head_load_with_head_replaced(tmp_path):
    cfg = DetectorConfig(**LIGHT)
    donor = build_detector(cfg).state_dict()
    donor["roi_heads.box_predictor.cls_score.weight"] = torch.randn(91, 256)
    donor["roi_heads.box_predictor.cls_score.bias"] = torch.randn(91)
    donor["roi_heads.box_predictor.bbox_pred.weight"] = torch.randn(91 * 4, 256)
    donor["roi_heads.box_predictor.bbox_pred.bias"] = torch.randn(91 * 4)
    torch.save(donor, tmp_path / "coco.pth")
    model = build_detector(DetectorConfig(**LIGHT, weights=str(tmp_path / "coco.pth")))
    messages = []
    load_pretrained(model, DetectorConfig(**LIGHT, weights=str(tmp_path / "coco.pth")), log=messages.append)
    state = model.state_dict()
    assert torch.equal(state["backbone.fpn.layer_blocks.0.0.weight"], donor["backbone.fpn.layer_blocks.0.0.weight"])
    assert state["roi_heads.box_predictor.cls_score.weight"].shape == (15, 256)
    assert "class head replaced" in messages[0] and "cls_score.weight" in messages[0]


def test_backbone_weights_load_into_the_body_and_wrong_files_fail(tmp_path):
    net = resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    cfg = DetectorConfig(**LIGHT, backbone_weights=str(tmp_path / "r18.pth"))
    model = build_detector(cfg)
    load_pretrained(model, cfg, log=lambda m: None)
    assert torch.equal(model.backbone.body.layer4[1].conv2.weight, net.layer4[1].conv2.weight)
    assert torch.equal(model.backbone.body.bn1.running_var, net.bn1.running_var)

    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pth")
    bad = DetectorConfig(**LIGHT, weights=str(tmp_path / "other.pth"))
    with pytest.raises(UserError, match="does not fit") as e:
        load_pretrained(build_detector(bad), bad)
    msg = str(e.value)  # library message: the file, what matched, what was expected; no CLI flags
    assert f"weights file {tmp_path / 'other.pth'} does not fit the fasterrcnn_resnet18_fpn detector" in msg
    assert "only 0% of its tensors match" in msg and "'encoder.weight'" in msg
    assert "config model 'fasterrcnn_resnet18_fpn'" in msg and "backbone_weights" in msg and "--" not in msg
    torch.save({"net": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # a module, not tensors
    with pytest.raises(UserError, match="weights_only"):
        read_state_dict(tmp_path / "pickled.pth")
    with pytest.raises(UserError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pth")


# ---------------------------------------------------------------- predict and export
def test_predict_and_artifact_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = DetectorConfig(**LIGHT, score_thresh=0.0)
    model = build_detector(cfg).eval()
    with torch.no_grad():  # make the untrained head emit boxes: bias the class logits
        model.roi_heads.box_predictor.cls_score.bias[3] = 5.0
    images = [np.random.default_rng(i).integers(0, 255, (CACHE, CACHE - 10 * i), dtype=np.uint8) for i in range(2)]
    dets = predict(model, images)
    assert len(dets) == 2 and all(len(d) > 0 for d in dets)
    for d, im in zip(dets, images):
        assert d.class_ids.min() >= 0 and d.class_ids.max() <= 13
        assert (np.diff(d.scores) <= 0).all()  # highest first
        assert (d.boxes[:, 2] <= im.shape[1] + 1e-3).all() and (d.boxes[:, 3] <= im.shape[0] + 1e-3).all()
    write_artifact(model.state_dict(), cfg, tmp_path / "export")
    loaded, loaded_cfg = load_detector(tmp_path / "export")
    assert loaded_cfg == cfg and not loaded.training
    again = predict(loaded, images)
    assert np.allclose(again[0].boxes, dets[0].boxes) and np.allclose(again[1].scores, dets[1].scores)
    batch = predict(loaded, torch.from_numpy(np.stack([images[0], images[0]])))
    assert np.allclose(batch[1].scores, dets[0].scores, atol=1e-6)
    with pytest.raises(UserError, match="model.pt"):
        load_detector(tmp_path)


# ---------------------------------------------------------------- training command decisions
V2 = "fasterrcnn_resnet50_fpn_v2"


def test_sync_batchnorm_only_with_several_cuda_processes():
    v2 = DetectorConfig(model=V2)
    on, why = sync_batchnorm_decision(v2, on_cuda=False, world_size=2)  # CPU DDP: torch would raise
    assert not on and "CUDA" in why
    on, why = sync_batchnorm_decision(v2, on_cuda=True, world_size=1)
    assert not on and "single process" in why
    assert sync_batchnorm_decision(v2, on_cuda=True, world_size=16)[0]
    assert sync_batchnorm_decision(DetectorConfig(), on_cuda=True, world_size=8) == (False, "")
    assert sync_batchnorm_decision(DetectorConfig(sync_batchnorm=True), on_cuda=True, world_size=2)[0]
    assert not sync_batchnorm_decision(DetectorConfig(sync_batchnorm=True), on_cuda=False, world_size=2)[0]


def test_apply_sync_batchnorm_converts_in_place_on_cuda_only():
    from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3))
    v2 = DetectorConfig(model=V2)
    apply_sync_batchnorm(types.SimpleNamespace(accelerator=CPUAccelerator(), world_size=2), net, v2)
    assert type(net[1]) is torch.nn.BatchNorm2d
    apply_sync_batchnorm(types.SimpleNamespace(accelerator=CUDAAccelerator(), world_size=2), net, v2)
    assert isinstance(net[1], torch.nn.SyncBatchNorm)


def _run_folder(tmp_path, **cfg) -> tuple:
    """A run folder with config.json and a (placeholder) last.ckpt, as resolve_config sees it."""
    run = tmp_path / "run"
    DetectorConfig(cache=str(tmp_path / "c.h5"), labels="train.csv", folds="folds.csv", **cfg).save(run / "config.json")
    (run / "checkpoints").mkdir()
    (run / "checkpoints/last.ckpt").write_bytes(b"x")
    return run, ["--out", str(run)]


def parse(*argv) -> object:
    return get_args_parser().parse_args([str(a) for a in argv])


def test_resume_modes_pick_the_checkpoint_or_start_fresh(tmp_path):
    data = ["--cache", "c.h5", "--labels", "l.csv", "--folds", "f.csv"]
    empty = tmp_path / "empty"
    assert resolve_config(parse("--out", empty, "--resume", "auto", *data))[1] is None  # fresh
    with pytest.raises(UserError, match="last.ckpt does not exist"):
        resolve_config(parse("--out", empty, "--resume", *data))
    run, out = _run_folder(tmp_path, fold=2)
    cfg, ckpt = resolve_config(parse(*out, "--resume", "auto"))
    assert ckpt == run / "checkpoints/last.ckpt" and cfg.fold == 2  # config.json is the base
    assert resolve_config(parse(*out, "--resume"))[1] == ckpt
    with pytest.raises(UserError, match="already holds a run"):
        resolve_config(parse(*out, *data))
    hpc = run / "hpc_ckpt_1.ckpt"  # Lightning's SLURM checkpoint, newer than last.ckpt
    hpc.write_bytes(b"x")
    os.utime(ckpt, (1, 1))
    assert find_checkpoint(run) == hpc


def test_resume_refuses_validation_and_architecture_changes(tmp_path, monkeypatch):
    run, out = _run_folder(tmp_path, fold=0, fusion="wbf")
    with pytest.raises(UserError) as e:
        resolve_config(parse(*out, "--resume", "auto", "--fold", 1))
    msg = str(e.value)
    assert "--fold" in msg and "has 0" in msg and "gives 1" in msg and "config.json" in msg and "new --out" in msg
    for flag, value in [("--fusion", "nms"), ("--folds", "other.csv"), ("--labels", "other.csv"),
                        ("--cache", "other.h5"), ("--limit-val-batches", 0.5), ("--arch", V2)]:
        with pytest.raises(UserError, match=flag):
            resolve_config(parse(*out, "--resume", flag, value))
    # Same values (a path spelled absolute instead of relative) and training-length flags pass.
    monkeypatch.chdir(tmp_path)
    cfg, _ = resolve_config(parse(*out, "--resume", "--fold", 0, "--labels", tmp_path / "train.csv",
                                  "--cache", tmp_path / "c.h5", "--epochs", 30, "--lr", 0.01))
    assert cfg.epochs == 30 and cfg.lr == 0.01 and cfg.fold == 0


# ---------------------------------------------------------------- vocabulary: --arch, --device
DATA = ["--cache", "c.h5", "--labels", "l.csv", "--folds", "f.csv"]


@pytest.mark.parametrize("device, accelerator, devices, lightning", [
    ("cuda:1", "gpu", "1,", [1]), ("cuda", "gpu", "1", 1), ("cpu", "cpu", "1", 1), ("auto", "auto", "1", 1),
])
def test_device_shorthand_is_the_lightning_pair(tmp_path, device, accelerator, devices, lightning):
    cfg, _ = resolve_config(parse("--out", tmp_path / "r", *DATA, "--device", device))
    assert (cfg.accelerator, cfg.devices) == (accelerator, devices)
    assert _devices(cfg.devices) == lightning  # what build_trainer hands to pl.Trainer(devices=...)


def test_devices_text_golden():
    assert [_devices(t) for t in ("auto", "2", "0,1", "1,", "-1")] == ["auto", 2, [0, 1], [1], -1]


def test_device_shorthand_with_accelerator_or_devices_is_refused(tmp_path):
    for extra in (["--accelerator", "gpu"], ["--devices", "2"]):
        with pytest.raises(UserError, match="--device cuda:1 is a shorthand for --accelerator/--devices; give one"):
            resolve_config(parse("--out", tmp_path / "r", *DATA, "--device", "cuda:1", *extra))


def test_arch_sets_the_config_model_and_defaults_match_the_cli_seed(tmp_path):
    cfg, _ = resolve_config(parse("--out", tmp_path / "r", *DATA, "--arch", "fasterrcnn_resnet18_fpn"))
    assert cfg.model == "fasterrcnn_resnet18_fpn" and cfg.seed == 0
    assert resolve_config(parse("--out", tmp_path / "s", *DATA))[0].model == "fasterrcnn_resnet50_fpn"


@pytest.mark.parametrize("argv, says", [
    (["--model", "fasterrcnn_resnet18_fpn"], "--model fasterrcnn_resnet18_fpn: the architecture is now "
                                             "--arch fasterrcnn_resnet18_fpn"),
    (["--model", "runs/f0/export"], "train loads no artifact"),
    (["--device", "gpu:1"], "argument --device: device 'gpu:1' is not a device name; expected cpu, cuda, cuda:N"),
])
def test_old_model_spelling_and_bad_device_exit_2(tmp_path, capsys, argv, says):
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--out", str(tmp_path / "r"), *DATA, *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "cxrdet train: error: " in err and says in err
    assert not (tmp_path / "r").exists()
