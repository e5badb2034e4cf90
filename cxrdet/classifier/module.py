"""The LightningModule: a torchvision backbone trained with BCE (``pos_weight``, soft labels) for
multi-label sources or softmax cross-entropy for multi-class ones, and an exact validation score.

Validation scores the WHOLE fold once per epoch: each rank keeps its images' probabilities by
image id, they are gathered on rank 0 (``gather_object``), DistributedSampler padding repeats
collapse by image id (the first copy is kept), rank 0 computes the score once
(:func:`cxrdet.classifier.metrics.validation_score`) and broadcasts it, so every rank logs the
same number. Never an average of per-rank scores.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F

from cxrdet.classifier.backbones import build_backbone, load_weights
from cxrdet.classifier.config import ClassifierConfig
from cxrdet.classifier.metrics import validation_score
from cxrdet.classifier.transforms import to_model_input
from cxrdet.training.schedule import warmup_cosine

MONITOR = "val_score"  # macro AUROC (multi-label) or accuracy (multi-class): what best.ckpt is chosen by


def metric_key(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


class ClassifierModule(pl.LightningModule):
    def __init__(self, config: dict, load_weights: bool = False):
        """``load_weights``: read ``config``'s --weights file (a fresh run only); off by default so
        ``load_from_checkpoint`` takes every weight from the checkpoint."""
        super().__init__()
        self.save_hyperparameters({"config": dict(config)})  # plain types: weights_only loading works
        self.cfg = ClassifierConfig.from_dict(dict(config))
        if not self.cfg.class_names or not self.cfg.task:
            raise ValueError("config has no class_names/task; they are recorded from the labels at training")
        self.model = build_backbone(self.cfg.arch, len(self.cfg.class_names))
        if load_weights and self.cfg.weights:
            load_weights_fn(self.model, self.cfg)
        pos_weight = torch.tensor(self.cfg.pos_weight or [1.0] * len(self.cfg.class_names))
        self.register_buffer("pos_weight", pos_weight, persistent=False)
        self._val: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W]`` -> logits ``[B, C]``."""
        return self.model(to_model_input(images, self.cfg.image_mean, self.cfg.image_std))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1) if self.cfg.task == "multiclass" else logits.sigmoid()

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.cfg.task == "multiclass":
            return F.cross_entropy(logits.float(), targets.long())
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=self.pos_weight)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets, _ = batch
        loss = self.loss(self(images), targets)
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:  # per-step logging syncs the GPU
            self.log("train/loss", loss.detach(), batch_size=len(images), prog_bar=True)
            self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=len(images))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = {}

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets, ids = batch
        probs = self.probabilities(self(images).float()).cpu().numpy()
        truth = targets.cpu().numpy()
        for image_id, p, t in zip(ids, probs, truth):
            self._val[image_id] = (p, t)

    def gathered_predictions(self) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        """This epoch's validation (probabilities, target) of every rank by image id, on rank 0."""
        parts = [self._val]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
            dist.gather_object(self._val, parts, dst=0)
            if parts is None:
                return None
        merged: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for part in parts:
            for image_id, value in part.items():
                merged.setdefault(image_id, value)  # padding repeats sit on later ranks: keep the first
        return merged

    def score(self, merged: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
        ids = sorted(merged)
        probs = np.stack([merged[i][0] for i in ids])
        targets = np.stack([merged[i][1] for i in ids])
        n = len(self.cfg.class_names)
        truth = np.eye(n, dtype=np.int64)[targets.astype(np.int64)] if self.cfg.task == "multiclass" else \
            (targets >= 0.5).astype(np.int64)
        return {**validation_score(self.cfg.task, truth, probs), "n_images": len(ids)}

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._val = {}
            return  # a few sanity batches are not the fold
        merged = self.gathered_predictions()
        result = self.score(merged) if merged is not None else None
        result = self.trainer.strategy.broadcast(result, src=0)
        self._val = {}
        self.log(MONITOR, result["score"], rank_zero_only=False, prog_bar=True)
        self.log("val_images", float(result["n_images"]), rank_zero_only=False)
        what = "val_recall" if self.cfg.task == "multiclass" else "val_auroc"
        for name, value in zip(self.cfg.class_names, result["per_class"]):
            if np.isfinite(value):
                self.log(f"{what}/{metric_key(name)}", value, rank_zero_only=False)

    def configure_optimizers(self):
        cfg = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        args = (total, cfg.warmup_steps, cfg.warmup_factor, cfg.min_lr_ratio)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, *args))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def load_weights_fn(model, cfg: ClassifierConfig) -> None:
    load_weights(model, cfg.weights, cfg.arch, log=pl.utilities.rank_zero_info)
