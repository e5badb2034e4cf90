"""The detector's one configuration: model, data, optimisation and trainer settings.

A flat dataclass of plain types (str, int, float, bool, lists), so it round-trips through JSON
and sits inside Lightning checkpoints without pickling any object. Each default carries the
reason it was chosen.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrdet.errors import UserError
from cxrdet.training.config_fields import field_types, typed_values
from cxrdet.training.loggers import DEFAULT_LOGGERS, parse_loggers
from cxrdet.formats import atomic
from cxrdet.fusion import FUSION_METHODS

MODELS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_resnet18_fpn",
          "fasterrcnn_mobilenet_v3_large_fpn")
OPTIMIZERS = ("sgd", "adamw")
FUSIONS = FUSION_METHODS  # label fusion before training: the methods cxrdet.fusion implements
# Fields that fix the network's shape: a resumed run or an exported artifact must keep them.
ARCHITECTURE_FIELDS = ("model", "weights", "backbone_weights", "trainable_layers", "anchor_sizes", "aspect_ratios")
# Fields that define what validation scores (images, ground truth, input scale, kept detections):
# a resumed run keeps them, or "best" would compare val_map across different validations.
VALIDATION_FIELDS = ("cache", "labels", "folds", "fold", "fusion", "fusion_iou", "min_size", "max_size",
                     "score_thresh", "nms_thresh", "detections_per_img", "image_mean", "image_std",
                     "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "limit_val_batches")


@dataclass
class DetectorConfig:
    # --- inputs and run folder
    cache: str = ""  # HDF5 cache written by `cxrdet prepare` (cache pixels)
    labels: str = ""  # VinBigData train.csv (original DICOM pixels)
    folds: str = ""  # FOLDS.csv (image_id,fold) from `cxrdet split`
    fold: int = 0  # validation fold; the others train
    out: str = ""  # run folder: checkpoints, logs, config.json, export/
    cache_size: int = 0  # long side of the cache images, recorded from the cache at training
    cache_voi: str = ""  # windowing the cache was made with; inference must prepare the same way

    # --- model
    model: str = "fasterrcnn_resnet50_fpn"  # the strong single-model baseline of the challenge (~0.24 LB)
    weights: str = ""  # full detector state dict (e.g. COCO); empty = none, nothing is downloaded
    backbone_weights: str = ""  # ImageNet ResNet state dict for the backbone; empty = none
    trainable_layers: int = 3  # torchvision's default for pretrained backbones; ignored from scratch (all 5)
    min_size: int = 1024  # VinBigData solutions trained at 512-1024 px; larger is better but costly
    max_size: int = 1024  # cache images are square-bounded, so the long side caps at min_size too
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])  # one per FPN level (torchvision)
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # torchvision default; lesions vary
    detections_per_img: int = 300  # mAP rewards many low-score boxes; 300 covers 14 classes comfortably
    box_batch_size_per_image: int = 512  # RoIs sampled per image for the box head (torchvision default)
    # RPN budgets: torchvision's COCO defaults (an image there holds ~7 objects of 80 classes, a
    # chest X-ray 0-5 findings); the CPU demo recipe measures smaller ones (benchmarks/bench_recipe.py)
    rpn_pre_nms_top_n_train: int = 2000  # proposals per FPN level before the RPN's NMS, training
    rpn_post_nms_top_n_train: int = 2000  # proposals per image after NMS, training (torchvision default)
    rpn_pre_nms_top_n_test: int = 1000  # the same at inference (torchvision default)
    rpn_post_nms_top_n_test: int = 1000  # proposals per image the box head scores at inference
    rpn_batch_size_per_image: int = 256  # anchors sampled per image for the RPN loss (torchvision default)
    score_thresh: float = 0.001  # keep near-zero scores: extra low-confidence boxes cost nothing in VOC AP
    nms_thresh: float = 0.5  # torchvision default per-class NMS in the box head
    image_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])  # ImageNet: pretrained backbones expect it
    image_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])  # ImageNet, same reason

    # --- data
    fusion: str = "wbf"  # fusing the 3 readers before training beat raw boxes in the challenge
    fusion_iou: float = 0.5  # middle of the 0.4-0.7 range that worked for WBF
    normal_fraction: float = 0.25  # share of "No finding" images per epoch (real negatives); <0 = all images as-is
    hflip_prob: float = 0.5  # chest anatomy is near-symmetric; hflip TTA also helped in the challenge
    crop_prob: float = 0.5  # random crop = scale jitter, since the model resizes to min_size anyway
    crop_min_scale: float = 0.7  # keep at least 70% of each side so large findings (heart) survive
    min_visible: float = 0.3  # drop a cropped box when less than 30% of its area stays in view
    min_box_size: float = 2.0  # boxes thinner than 2 cache pixels carry no signal after clipping
    color_prob: float = 0.5  # brightness/contrast/gamma: scanners and windowing differ between sites
    brightness: float = 0.1  # +-10% of full range
    contrast: float = 0.2  # x(1 +- 0.2) around mid-grey
    gamma: float = 0.25  # gamma in [1/1.25, 1.25]
    batch_size: int = 4  # per device; fits a 1024 px R50-FPN in 16 GB with AMP
    val_batch_size: int = 4  # per device; same-size batches keep padding small
    workers: int = 4  # DataLoader workers per device (HDF5 read + augment)

    # --- optimisation (lr scaling rule: lr = 0.00125 x total batch for SGD, torchvision references)
    optimizer: str = "sgd"  # torchvision's detection references train Faster R-CNN with SGD
    lr: float = 0.005  # 0.00125 per image x batch 4 on one device
    momentum: float = 0.9  # torchvision references
    weight_decay: float = 1e-4  # torchvision references
    warmup_steps: int = 500  # linear warmup stabilises the RPN early on (torchvision uses 1000)
    warmup_factor: float = 0.001  # start at lr x 0.001, as torchvision's warmup does
    min_lr_ratio: float = 0.01  # cosine decays to 1% of lr, not to 0, so late steps still learn
    grad_clip: float = 10.0  # clip the global grad norm: guards fp16/early-RPN spikes; 0 = off

    # --- trainer
    epochs: int = 20  # about what single Faster R-CNN models in the challenge needed at 1024 px
    max_steps: int = -1  # -1 = run by epochs; > 0 replaces epochs (a step budget, e.g. the demo's)
    accelerator: str = "auto"  # GPU when there is one
    devices: str = "auto"  # all visible devices of the node
    num_nodes: int = 1  # more under torchrun/SLURM
    strategy: str = "auto"  # Lightning picks DDP for several devices
    precision: str = "32-true"  # safe everywhere; use 16-mixed / bf16-mixed on GPUs
    sync_batchnorm: bool = False  # on by itself for v2 (BatchNorm heads) with >1 CUDA process; CPU cannot sync BN
    seed: int = 0  # same seed, same sampling and augmentations; 0 = every cxrdet --seed default
    limit_train_batches: float = 1.0  # fraction (<=1) or count (>1) of batches; 1.0 = all
    limit_val_batches: float = 1.0  # the metric needs the whole fold: keep 1.0 for real runs
    log_every_n_steps: int = 20  # Lightning's default cadence is 50; 20 gives smoother curves
    loggers: list[str] = field(default_factory=lambda: list(DEFAULT_LOGGERS))  # csv + tensorboard, as runs always wrote; mlflow on request

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "DetectorConfig":
        cfg = cls(**typed_values(values, FIELD_TYPES, source, "detector"))
        cfg.check(source)
        return cfg

    def check(self, source: str = "config") -> None:
        """Refuse values that cannot work, naming the field and the allowed values."""
        if self.model not in MODELS:
            raise UserError(f"{source}: model {self.model!r} is not one of {list(MODELS)}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"{source}: optimizer {self.optimizer!r} is not one of {list(OPTIMIZERS)}")
        if self.fusion not in FUSIONS:
            raise UserError(f"{source}: fusion {self.fusion!r} is not one of {list(FUSIONS)}")
        if not 0 <= self.trainable_layers <= 5:
            raise UserError(f"{source}: trainable_layers must be in 0..5, got {self.trainable_layers}")
        if self.normal_fraction >= 1:
            raise UserError(f"{source}: normal_fraction must be < 1 (or < 0 for all images), got {self.normal_fraction}")
        if self.batch_size < 1 or self.val_batch_size < 1:
            raise UserError(f"{source}: batch sizes must be >= 1")
        budgets = ("box_batch_size_per_image", "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train",
                   "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "rpn_batch_size_per_image")
        for name in budgets:
            if getattr(self, name) < 1:
                raise UserError(f"{source}: {name} must be >= 1, got {getattr(self, name)}")
        if len(self.anchor_sizes) != 5:
            raise UserError(f"{source}: anchor_sizes needs 5 values (one per FPN level), got {self.anchor_sizes}")
        if self.lr <= 0:
            raise UserError(f"{source}: lr must be > 0, got {self.lr}")
        try:
            parse_loggers(self.loggers)
        except ValueError as e:
            raise UserError(f"{source}: loggers: {e}") from None

    @property
    def pretrained(self) -> bool:
        """Pretrained weights change the architecture (frozen BN, frozen early layers)."""
        return bool(self.weights or self.backbone_weights)

    def save(self, path: str | Path) -> Path:
        return atomic.write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "DetectorConfig":
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"detector config {path} does not exist") from None
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, deep nesting
            raise UserError(f"detector config {path} is not valid UTF-8 JSON: {e}") from None
        return cls.from_dict(values, source=str(path))


FIELD_TYPES = field_types(DetectorConfig)
