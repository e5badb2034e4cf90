"""The LightningModule: Faster R-CNN training steps, optimiser/schedule, and exact validation mAP.

Validation scores the WHOLE validation fold once per epoch with the competition metric
(:func:`cxrdet.metrics.evaluate_detections`, mAP@0.4): each rank keeps its images' detections by
image id, they are gathered on rank 0 (``gather_object``: only rank 0 needs the whole fold),
DistributedSampler padding duplicates collapse by image id (the first copy is kept), rank 0
computes the score once and broadcasts only the scores, so every rank logs the same number.
Never an average of per-rank scores.

Boxes are scored in ORIGINAL DICOM pixels against the fused validation labels, mapped from the
cache by :func:`cxrdet.detections.to_original` (the function ``cxrdet infer`` maps with: scaled,
clipped to the image, sub-pixel boxes dropped). Only the images predicted this epoch are scored:
with ``--limit-val-batches`` below 1 the ground truth shrinks to those images (under DDP to the
union of the gathered ids), so a limited validation is a smaller fold, not missed images. Class 14
("No finding") is added to every image with the box (0, 0, 1, 1) and score
``1 - max finding score`` (1 when the detector finds nothing), so the number is comparable to the
competition metric, where class 14 is one of the 15 scored classes.
"""

from __future__ import annotations

import math

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist

from cxrdet.classes import CLASS_NAMES
from cxrdet.detections import Detections, normal_detection, to_original
from cxrdet.detector.config import DetectorConfig
from cxrdet.detector.model import build_detector, load_pretrained
from cxrdet.detector.predict import outputs_to_detections
from cxrdet.detector.transforms import to_model_input


def warmup_cosine(step: int, total: int, warmup: int, warmup_factor: float, min_ratio: float) -> float:
    """LR multiplier: linear warmup from ``warmup_factor`` to 1, then cosine down to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return warmup_factor + (1.0 - warmup_factor) * step / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def with_no_finding(det: Detections) -> Detections:
    """Add the class-14 call ``(0, 0, 1, 1)`` scored ``1 - max finding score``."""
    score = 1.0 - (float(det.scores.max()) if len(det) else 0.0)
    return Detections.concat([det, normal_detection(score)])


def score_predictions(val_gt, per_image: dict[str, Detections]):
    """The validation metric (a ``MetricResult``) of ``per_image`` (original pixels, no class 14).

    Scores exactly the predicted images: ``val_gt`` is restricted to ``per_image``'s ids, so a
    limited validation (part of the fold) is a smaller ground truth, not images counted as
    missed. Each image gets its class-14 call (:func:`with_no_finding`). ``cxrdet val`` scores
    with this function too.
    """
    from cxrdet.detections import detections_to_frame
    from cxrdet.metrics import evaluate_detections

    gt = val_gt[val_gt["image_id"].isin(set(per_image))].reset_index(drop=True)
    det = detections_to_frame({k: with_no_finding(v) for k, v in per_image.items()})
    return evaluate_detections(gt, det, pred_image_ids=list(per_image))


def _finite(x: float) -> float:
    return float(x) if np.isfinite(x) else 0.0


class DetectorModule(pl.LightningModule):
    def __init__(self, config: dict, load_weights: bool = False):
        """``load_weights``: read ``config``'s --weights/--backbone-weights files (a fresh run only).

        Off by default and not saved in the hyperparameters, so ``load_from_checkpoint`` takes
        every weight from the checkpoint and never needs the original weight files again.
        """
        super().__init__()
        # Plain types only: checkpoints stay loadable with weights_only=True.
        self.save_hyperparameters({"config": dict(config)})
        self.cfg = DetectorConfig.from_dict(dict(config))
        self.model = build_detector(self.cfg)
        if load_weights and self.cfg.pretrained:
            load_pretrained(self.model, self.cfg, log=pl.utilities.rank_zero_info)
        self._val_preds: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def forward(self, images: list[torch.Tensor]):
        return self.model([to_model_input(im) for im in images])

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(
            [to_model_input(im) for im in images],
            [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets],
        )
        total = sum(losses.values())
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:  # when Lightning writes logs
            # Only on logging steps: per-step logging forces a GPU sync and costs ~5% throughput.
            n = len(images)
            self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, batch_size=n)
            self.log("train/loss", total.detach(), batch_size=n, prog_bar=True)
            self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=n, prog_bar=True)
        return total

    def on_validation_epoch_start(self) -> None:
        self._val_preds = {}

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        outputs = self(images)
        for det, im, t in zip(outputs_to_detections(outputs), images, targets):
            orig = to_original(det, tuple(im.shape[-2:]), tuple(t["orig_hw"].tolist()))
            self._val_preds[t["image_id"]] = (orig.boxes, orig.scores, orig.class_ids)

    def gathered_predictions(self) -> dict[str, Detections] | None:
        """This epoch's validation detections of every rank, one entry per image id, on rank 0.

        None on the other ranks: they only need the score, which rank 0 broadcasts.
        """
        parts = [self._val_preds]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
            dist.gather_object(self._val_preds, parts, dst=0)
            if parts is None:
                return None
        merged: dict[str, Detections] = {}
        for part in parts:
            for image_id, (boxes, scores, class_ids) in part.items():
                # Padding repeats sit on later ranks than their originals: keep the original.
                merged.setdefault(image_id, Detections(boxes, scores, class_ids))
        return merged

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._val_preds = {}
            return  # a few sanity batches are not the fold; the metric is for the whole fold only
        merged = self.gathered_predictions()
        result = self.score(merged) if merged is not None else None
        result = self.trainer.strategy.broadcast(result, src=0)
        self._val_preds = {}
        self.log("val_map", result["map"], rank_zero_only=False, prog_bar=True)
        self.log("val_map_no14", result["map_no14"], rank_zero_only=False)
        self.log("val_images", float(result["n_images"]), rank_zero_only=False)
        for cid, ap in result["per_class"].items():
            name = CLASS_NAMES[int(cid)].replace("/", "-").replace(" ", "_")
            self.log(f"val_ap/{int(cid):02d}_{name}", ap, rank_zero_only=False)

    def score(self, per_image: dict[str, Detections]) -> dict:
        """Competition mAP@0.4 of ``per_image`` (original pixels) against the validation labels."""
        res = score_predictions(self.trainer.datamodule.table.val_gt, per_image)
        per_class = {int(k): float(v) for k, v in res.per_class.items() if np.isfinite(v)}
        # NaN only when the fold has no ground truth at all; 0 keeps checkpoint ranking sane.
        return {"map": _finite(res.map), "map_no14": _finite(res.map_no14), "per_class": per_class,
                "n_images": len(per_image)}

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
