"""Class probabilities of a trained classifier for cache-size images (what ``classify`` and
``infer --classifier`` run): resize to the model's square input, optional hflip TTA (the mean of
the two views), sigmoid (multi-label) or softmax (multi-class)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from cxrdet.classifier.config import ClassifierConfig
from cxrdet.classifier.transforms import resize_square, to_model_input

TTA_CHOICES = ("none", "hflip")


def batch_tensor(images: Sequence[np.ndarray], size: int, device: torch.device) -> torch.Tensor:
    """uint8 ``[B, size, size]`` on ``device`` from cache images of any shape."""
    stacked = np.stack([resize_square(np.asarray(im, dtype=np.uint8), size) for im in images])
    return torch.from_numpy(stacked).to(device, non_blocking=True)


@torch.inference_mode()
def predict_probabilities(model: nn.Module, cfg: ClassifierConfig, batch: torch.Tensor, tta: str = "none") -> np.ndarray:
    """``[B, C]`` probabilities of a uint8 ``[B, H, W]`` batch already on the model's device."""
    x = to_model_input(batch, cfg.image_mean, cfg.image_std)
    logits = model(x).float()
    act = (lambda z: z.softmax(dim=1)) if cfg.task == "multiclass" else torch.sigmoid
    probs = act(logits)
    if tta == "hflip":
        probs = (probs + act(model(x.flip(-1)).float())) / 2
    return probs.cpu().numpy().astype(np.float64)


def ensemble_probabilities(models: Sequence[tuple[nn.Module, ClassifierConfig]], images: Sequence[np.ndarray],
                           device: torch.device, tta: str = "none") -> np.ndarray:
    """The mean probabilities of several classifiers (same classes) for ``images``."""
    inputs = {size: batch_tensor(images, size, torch.device("cpu")) for size in {cfg.size for _, cfg in models}}
    return ensemble_from_inputs(models, inputs, device, tta)


def ensemble_from_inputs(models: Sequence[tuple[nn.Module, ClassifierConfig]], inputs: Mapping[int, torch.Tensor],
                         device: torch.device, tta: str = "none") -> np.ndarray:
    """The mean probabilities of several classifiers for batches already resized: ``inputs[size]``
    is the uint8 ``[B, size, size]`` batch of the models whose input side is ``size``."""
    total = None
    for model, cfg in models:
        probs = predict_probabilities(model, cfg, inputs[cfg.size].to(device, non_blocking=True), tta)
        total = probs if total is None else total + probs
    return total / len(models)


class ResizedBatch(NamedTuple):
    """What :class:`ResizeCollate` hands the main process for one DataLoader batch."""

    ids: list[str]  # the readable images, in batch order
    inputs: dict[int, torch.Tensor]  # input side -> uint8 [len(ids), side, side]
    images: list[np.ndarray | None]  # cache-size images of ``ids`` (None unless kept, e.g. for heatmaps)
    orig_hws: list  # original (rows, columns) of ``ids``
    failed: list[tuple[str, str]]  # (image_id, reason) of the unreadable ones


class ResizeCollate:
    """DataLoader collate for classification: resizes each readable image to every model input side
    inside the worker and stacks each side into ONE uint8 tensor. A worker hands tensors over
    through shared memory, one file descriptor per tensor: one per batch instead of one per image
    (about 0.5 ms each on a CPU), and with workers the resizing overlaps the forward pass. The cache-size
    images travel too only when ``keep_images`` (Grad-CAM overlays need them)."""

    def __init__(self, sizes: Sequence[int], keep_images: bool = False) -> None:
        self.sizes, self.keep_images = sorted(set(int(s) for s in sizes)), keep_images

    def __call__(self, samples: Sequence) -> ResizedBatch:
        good = [s for s in samples if s.image is not None]
        failed = [(s.image_id, s.error or "unreadable") for s in samples if s.image is None]
        cpu = torch.device("cpu")
        inputs = {size: batch_tensor([s.image for s in good], size, cpu) if good
                  else torch.zeros((0, size, size), dtype=torch.uint8) for size in self.sizes}
        images = [torch.from_numpy(np.ascontiguousarray(s.image)) if self.keep_images else None for s in good]
        return ResizedBatch([s.image_id for s in good], inputs, images, [s.orig_hw for s in good], failed)
