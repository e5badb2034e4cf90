"""The detector recipe's knobs: RPN/RoI budgets, the MobileNetV3-FPN option, the augmentation
flags, from the command line to the torchvision model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models import mobilenet_v3_large

from cxrdet.detector.config import DetectorConfig
from cxrdet.detector.export import load_detector, write_artifact
from cxrdet.detector.model import build_detector, load_pretrained
from cxrdet.detector.predict import predict
from cxrdet.detector.train import get_args_parser, resolve_config
from cxrdet.errors import UserError

from detector_fixtures import CACHE, limit_threads

limit_threads()

MOBILE = dict(model="fasterrcnn_mobilenet_v3_large_fpn", min_size=CACHE, max_size=CACHE,
              anchor_sizes=[16, 32, 64, 128, 256])
DATA = ["--cache", "c.h5", "--labels", "l.csv", "--folds", "f.csv"]


def test_budgets_reach_the_rpn_and_the_box_sampler():
    cfg = DetectorConfig(model="fasterrcnn_resnet18_fpn", rpn_pre_nms_top_n_train=700, rpn_post_nms_top_n_train=300,
                         rpn_pre_nms_top_n_test=400, rpn_post_nms_top_n_test=200, rpn_batch_size_per_image=64,
                         box_batch_size_per_image=96)
    m = build_detector(cfg)
    assert m.rpn._pre_nms_top_n == {"training": 700, "testing": 400}
    assert m.rpn._post_nms_top_n == {"training": 300, "testing": 200}
    assert m.rpn.fg_bg_sampler.batch_size_per_image == 64
    assert m.roi_heads.fg_bg_sampler.batch_size_per_image == 96
    default = build_detector(DetectorConfig(model="fasterrcnn_resnet18_fpn"))  # torchvision's COCO budgets
    assert default.rpn._pre_nms_top_n == {"training": 2000, "testing": 1000}
    assert default.roi_heads.fg_bg_sampler.batch_size_per_image == 512


@pytest.mark.parametrize("field", ["rpn_post_nms_top_n_train", "box_batch_size_per_image", "rpn_batch_size_per_image"])
def test_a_budget_below_one_is_refused_naming_the_field(field):
    with pytest.raises(UserError, match=f"cfg: {field} must be >= 1, got 0"):
        DetectorConfig.from_dict({field: 0}, source="cfg")


def test_recipe_flags_land_in_the_config(tmp_path):
    argv = ["--out", str(tmp_path / "r"), *DATA, "--rpn-pre-nms-top-n-train", "1000", "--rpn-post-nms-top-n-train",
            "500", "--box-batch-size-per-image", "128", "--crop-prob", "0", "--color-prob", "0.25", "--hflip-prob", "1",
            "--arch", "fasterrcnn_mobilenet_v3_large_fpn"]
    cfg, _ = resolve_config(get_args_parser().parse_args(argv))
    assert (cfg.rpn_pre_nms_top_n_train, cfg.rpn_post_nms_top_n_train, cfg.box_batch_size_per_image) == (1000, 500, 128)
    assert (cfg.crop_prob, cfg.color_prob, cfg.hflip_prob) == (0.0, 0.25, 1.0)
    assert cfg.model == "fasterrcnn_mobilenet_v3_large_fpn"
    assert cfg.rpn_pre_nms_top_n_test == 1000  # not given: the default


def test_mobilenet_detector_is_torchvisions_and_round_trips(tmp_path):
    torch.manual_seed(0)
    cfg = DetectorConfig(**MOBILE, score_thresh=0.0)
    model = build_detector(cfg).eval()
    # torchvision's fasterrcnn_mobilenet_v3_large_fpn: 3 FPN levels, every anchor size on each, rpn score 0.05
    assert model.rpn.anchor_generator.sizes == ((16, 32, 64, 128, 256),) * 3
    assert model.rpn.score_thresh == pytest.approx(0.05)
    assert model.roi_heads.box_predictor.cls_score.out_features == 15
    assert all(p.requires_grad for p in model.parameters())  # from scratch all 6 stages train
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[5] = 5.0  # make the untrained head emit boxes
    image = np.random.default_rng(0).integers(0, 255, (CACHE, CACHE - 8), dtype=np.uint8)
    dets = predict(model, [image])[0]
    write_artifact(model.state_dict(), cfg, tmp_path / "export")
    loaded, loaded_cfg = load_detector(tmp_path / "export")
    assert loaded_cfg == cfg
    again = predict(loaded, [image])[0]
    assert len(dets) > 0 and np.allclose(again.boxes, dets.boxes) and np.allclose(again.scores, dets.scores)


def test_mobilenet_backbone_weights_load_without_their_features_prefix(tmp_path):
    net = mobilenet_v3_large(weights=None)
    with torch.no_grad():
        net.features[16][0].weight.normal_()
    torch.save(net.state_dict(), tmp_path / "mnv3.pth")  # keys features.N..., classifier.N...
    cfg = DetectorConfig(**MOBILE, backbone_weights=str(tmp_path / "mnv3.pth"), trainable_layers=3)
    model = build_detector(cfg)
    load_pretrained(model, cfg, log=lambda m: None)
    assert torch.equal(model.backbone.body["16"][0].weight, net.features[16][0].weight)
    assert not model.backbone.body["0"][0].weight.requires_grad  # pretrained: early stages frozen
