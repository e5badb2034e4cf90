"""The classifier's one configuration: model, data, optimisation and trainer settings.

A flat dataclass of plain types, so it round-trips through JSON and sits inside Lightning
checkpoints without pickling. Each default carries the reason it was chosen. Fields marked
"recorded" are filled at training from the cache and the labels (never set by hand).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrdet.errors import UserError
from cxrdet.flags import DEFAULT_SEED
from cxrdet.formats import atomic
from cxrdet.training.config_fields import field_types, typed_values
from cxrdet.training.loggers import DEFAULT_LOGGERS, parse_loggers

ARCHS = ("densenet121", "resnet50", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
         "efficientnet_b4", "resnet18", "mobilenet_v3_small")
OPTIMIZERS = ("adamw", "sgd")
TASKS = ("multilabel", "multiclass")
# Fields that fix the network's shape: a resumed run or an exported artifact keeps them.
ARCHITECTURE_FIELDS = ("arch", "weights", "class_names", "task")
# Fields that define what validation scores: a resumed run keeps them, or "best" would compare
# val_score across different validations.
VALIDATION_FIELDS = ("cache", "labels", "folds", "fold", "size", "limit_val_batches")


@dataclass
class ClassifierConfig:
    # --- inputs and run folder
    cache: str = ""  # HDF5 cache written by `cxrdet prepare` (the detector's cache works as is)
    labels: str = ""  # VinBigData train.csv, NIH-style CSV, or an ImageFolder directory
    folds: str = ""  # FOLDS.csv (image_id,fold)
    fold: int = 0  # validation fold; the others train
    out: str = ""  # run folder: checkpoints, logs, config.json, export/
    cache_size: int = 0  # recorded: long side of the cache images
    cache_voi: str = ""  # recorded: windowing of the cache; inference prepares the same way
    label_source: str = ""  # recorded: vinbigdata | nih | folder
    task: str = ""  # recorded: multilabel (sigmoid + BCE) or multiclass (softmax + CE)
    class_names: list[str] = field(default_factory=list)  # recorded: one output per name, in order
    pos_weight: list[float] = field(default_factory=list)  # recorded: BCE pos_weight per class (training folds)

    # --- model
    arch: str = "densenet121"  # CheXNet's backbone; the common reference for CXR classification
    weights: str = ""  # local torchvision state dict (e.g. ImageNet); empty = from scratch, nothing downloaded
    size: int = 512  # model input side: VinBigData filters used 512-1024, NIH/CheXNet 224
    max_pos_weight: float = 20.0  # caps pos_weight = negatives/positives: very rare classes otherwise dominate
    image_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])  # ImageNet: pretrained weights expect it
    image_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])  # ImageNet, same reason

    # --- augmentation (chest anatomy stays plausible: no vertical flip, no large rotations)
    hflip_prob: float = 0.5  # chest anatomy is near-symmetric; hflip TTA helped in the challenge
    affine_prob: float = 0.5  # scale/shift jitter: patients are framed differently
    scale: float = 0.1  # zoom in [0.9, 1.1]
    shift: float = 0.05  # up to 5% of the side in x and y
    color_prob: float = 0.5  # brightness/contrast: scanners and windowing differ between sites
    brightness: float = 0.1  # +-10% of full range
    contrast: float = 0.2  # x(1 +- 0.2) around mid-grey

    # --- data loading
    batch_size: int = 16  # per device; a 512 px DenseNet-121 fits 16 GB with AMP
    val_batch_size: int = 32  # per device; no gradients, so twice the training batch
    workers: int = 4  # DataLoader workers per device (HDF5 read + resize + augment)

    # --- optimisation
    optimizer: str = "adamw"  # the usual choice for fine-tuning CNN classifiers on CXRs
    lr: float = 3e-4  # AdamW for the TOTAL batch of 16; scale linearly with batch x devices
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-2  # AdamW's decoupled default (torch uses 1e-2)
    warmup_steps: int = 100  # linear warmup keeps early BatchNorm statistics from blowing up
    warmup_factor: float = 0.01  # start at lr x 0.01
    min_lr_ratio: float = 0.01  # cosine decays to 1% of lr, not to 0
    grad_clip: float = 0.0  # off: classification losses are bounded; set e.g. 5 for fp16 runs

    # --- trainer
    epochs: int = 10  # the challenge's image classifiers trained 5-20 epochs
    max_steps: int = -1  # -1 = run by epochs
    accelerator: str = "auto"  # GPU when there is one
    devices: str = "auto"  # all visible devices of the node
    num_nodes: int = 1  # more under torchrun/SLURM
    strategy: str = "auto"  # Lightning picks DDP for several devices
    precision: str = "32-true"  # safe everywhere; use 16-mixed / bf16-mixed on GPUs
    seed: int = DEFAULT_SEED  # the one --seed default of every command
    limit_train_batches: float = 1.0  # fraction (<=1) or count (>1) of batches; 1.0 = all
    limit_val_batches: float = 1.0  # the metric needs the whole fold: keep 1.0 for real runs
    log_every_n_steps: int = 20  # smoother curves than Lightning's 50
    loggers: list[str] = field(default_factory=lambda: list(DEFAULT_LOGGERS))  # csv + tensorboard like the detector; mlflow on request

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "ClassifierConfig":
        """A checked config from a parsed JSON object: known keys, each of its field's type
        (the detector config's rules), then :meth:`check`; UserError naming ``source`` otherwise."""
        cfg = cls(**typed_values(values, FIELD_TYPES, source, "classifier"))
        cfg.check(source)
        return cfg

    def check(self, source: str = "config") -> None:
        """Refuse values that cannot work, naming the field and the allowed values."""
        if self.arch not in ARCHS:
            raise UserError(f"{source}: arch {self.arch!r} is not one of {list(ARCHS)}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"{source}: optimizer {self.optimizer!r} is not one of {list(OPTIMIZERS)}")
        if self.task and self.task not in TASKS:
            raise UserError(f"{source}: task {self.task!r} is not one of {list(TASKS)}")
        if not 16 <= self.size <= 4096:
            raise UserError(f"{source}: size must be in 16..4096 pixels, got {self.size}")
        if self.batch_size < 1 or self.val_batch_size < 1:
            raise UserError(f"{source}: batch sizes must be >= 1, got {self.batch_size} and {self.val_batch_size}")
        if self.lr <= 0:
            raise UserError(f"{source}: lr must be > 0, got {self.lr}")
        for name in ("hflip_prob", "affine_prob", "color_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"{source}: {name} must be a probability in [0, 1], got {getattr(self, name)}")
        try:
            parse_loggers(self.loggers)
        except ValueError as e:
            raise UserError(f"{source}: loggers: {e}") from None
        repeated = sorted(n for n, k in Counter(self.class_names).items() if k > 1)
        if repeated:  # one output per name: a repeated name would hide which output is which
            raise UserError(f"{source}: class_names lists {repeated} more than once; each class once")
        if self.pos_weight and len(self.pos_weight) != len(self.class_names):
            raise UserError(f"{source}: {len(self.pos_weight)} pos_weight values for {len(self.class_names)} classes")

    @property
    def monitor_name(self) -> str:
        """What val_score is: macro AUROC (multi-label) or accuracy (multi-class)."""
        return "accuracy" if self.task == "multiclass" else "macro AUROC"

    def save(self, path: str | Path) -> Path:
        return atomic.write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "ClassifierConfig":
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"classifier config {path} does not exist") from None
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, deep nesting
            raise UserError(f"classifier config {path} is not valid UTF-8 JSON: {e}") from None
        except OSError as e:  # a folder, unreadable: the path is the clue
            raise UserError(f"classifier config {path} cannot be read ({e.strerror or e})") from None
        return cls.from_dict(values, source=str(path))


FIELD_TYPES = field_types(ClassifierConfig)
