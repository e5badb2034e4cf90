"""Classifier input: a cache image resized to ``size x size``, then flip / scale-shift /
brightness-contrast augmentation that keeps chest anatomy plausible (no vertical flip, no large
rotation). All numpy + OpenCV on uint8, so DataLoader workers do it and batches are small."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass(frozen=True)
class AugmentSettings:
    hflip_prob: float = 0.5
    affine_prob: float = 0.5
    scale: float = 0.1
    shift: float = 0.05
    color_prob: float = 0.5
    brightness: float = 0.1
    contrast: float = 0.2

    @classmethod
    def from_config(cls, cfg) -> "AugmentSettings":
        return cls(cfg.hflip_prob, cfg.affine_prob, cfg.scale, cfg.shift, cfg.color_prob, cfg.brightness, cfg.contrast)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """``[h, w]`` uint8 -> ``[size, size]`` (area when shrinking, bilinear when enlarging).

    Chest films are close to square, so squashing costs less than letterbox padding, which
    would spend input pixels on black borders.
    """
    if image.shape == (size, size):
        return image
    shrink = image.shape[0] >= size and image.shape[1] >= size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def augment(image: np.ndarray, rng: np.random.Generator, s: AugmentSettings) -> np.ndarray:
    """One random augmentation of a square uint8 image (same shape out)."""
    out = image
    if rng.random() < s.hflip_prob:
        out = out[:, ::-1]
    if rng.random() < s.affine_prob and (s.scale > 0 or s.shift > 0):
        n = out.shape[0]
        zoom = 1.0 + rng.uniform(-s.scale, s.scale)
        dx, dy = rng.uniform(-s.shift, s.shift, 2) * n
        matrix = cv2.getRotationMatrix2D((n / 2, n / 2), 0.0, zoom)
        matrix[:, 2] += (dx, dy)
        out = cv2.warpAffine(np.ascontiguousarray(out), matrix, (n, n), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if rng.random() < s.color_prob and (s.brightness > 0 or s.contrast > 0):
        gain = 1.0 + rng.uniform(-s.contrast, s.contrast)
        bias = rng.uniform(-s.brightness, s.brightness) * 255.0
        x = (out.astype(np.float32) - 127.5) * gain + 127.5 + bias
        out = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


def to_model_input(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 ``[B, H, W]`` -> float ``[B, 3, H, W]`` normalised (grey copied to the 3 channels
    that ImageNet-pretrained backbones expect); runs on the model's device."""
    x = images.float().div_(255.0).unsqueeze(1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    sd = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / sd
