"""Class probabilities of a trained classifier for cache-size images (what ``classify`` and
``infer --classifier`` run): resize to the model's square input, optional hflip TTA (the mean of
the two views), sigmoid (multi-label) or softmax (multi-class)."""

from __future__ import annotations

from collections.abc import Sequence

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
    total = None
    for model, cfg in models:
        probs = predict_probabilities(model, cfg, batch_tensor(images, cfg.size, device), tta)
        total = probs if total is None else total + probs
    return total / len(models)
