"""Training augmentations that keep boxes right, and the uint8 -> model-input conversion.

Augmentations work on a uint8 ``[h, w]`` cache image and its ``[N, 4]`` xyxy boxes (cache
pixels, :mod:`cxrdet.boxes` convention) with a ``numpy.random.Generator``, so the same seed gives
the same result in any worker. Boxes that leave the image are clipped, and dropped when too
little of them stays visible or they become thinner than ``min_box_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cxrdet.boxes import box_area, clip_boxes, hflip_boxes, valid_mask


@dataclass(frozen=True)
class AugmentSettings:
    hflip_prob: float = 0.5
    crop_prob: float = 0.5
    crop_min_scale: float = 0.7
    min_visible: float = 0.3
    min_box_size: float = 2.0
    color_prob: float = 0.5
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 0.25

    @classmethod
    def from_config(cls, cfg) -> "AugmentSettings":
        return cls(**{name: getattr(cfg, name) for name in cls.__dataclass_fields__})


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror the image left-right and its boxes with it."""
    return np.ascontiguousarray(image[:, ::-1]), hflip_boxes(boxes, image.shape[1])


def crop(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, window: tuple[int, int, int, int],
    min_visible: float, min_box_size: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut ``window = (x0, y0, x1, y1)`` out of the image; shift, clip and filter the boxes."""
    x0, y0, x1, y1 = window
    out = np.ascontiguousarray(image[y0:y1, x0:x1])
    shifted = boxes - np.array([x0, y0, x0, y0], dtype=np.float64)
    clipped = clip_boxes(shifted, out.shape)
    before = box_area(boxes)
    visible = np.divide(box_area(clipped), before, out=np.zeros_like(before), where=before > 0)
    keep = valid_mask(clipped, min_box_size) & (visible >= min_visible)
    return out, clipped[keep], labels[keep]


def random_crop_window(hw: tuple[int, int], rng: np.random.Generator, min_scale: float) -> tuple[int, int, int, int]:
    """A window whose sides are each a random ``[min_scale, 1]`` share of the image."""
    h, w = hw
    ch = max(1, int(round(h * rng.uniform(min_scale, 1.0))))
    cw = max(1, int(round(w * rng.uniform(min_scale, 1.0))))
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    return x0, y0, x0 + cw, y0 + ch


def color_lut(brightness: float, contrast: float, gamma: float) -> np.ndarray:
    """A 256-entry uint8 lookup table: gamma, then contrast around mid-grey, then brightness."""
    x = np.arange(256, dtype=np.float64) / 255.0
    x = x**gamma
    x = (x - 0.5) * contrast + 0.5 + brightness
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def random_color(image: np.ndarray, rng: np.random.Generator, s: AugmentSettings) -> np.ndarray:
    lut = color_lut(
        brightness=rng.uniform(-s.brightness, s.brightness),
        contrast=rng.uniform(1 - s.contrast, 1 + s.contrast),
        gamma=float(np.exp(rng.uniform(-np.log1p(s.gamma), np.log1p(s.gamma)))),
    )
    return lut[image]


def augment(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator, s: AugmentSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random hflip, crop (scale jitter) and brightness/contrast/gamma; boxes follow the pixels."""
    # Draw every random number in a fixed order so a seed fixes the whole result.
    do_flip, do_crop, do_color = rng.random(3) < (s.hflip_prob, s.crop_prob, s.color_prob)
    if do_flip:
        image, boxes = hflip(image, boxes)
    if do_crop:
        window = random_crop_window(image.shape, rng, s.crop_min_scale)
        image, boxes, labels = crop(image, boxes, labels, window, s.min_visible, s.min_box_size)
    if do_color:
        image = random_color(image, rng, s)
    return image, boxes, labels


def to_model_input(image: torch.Tensor) -> torch.Tensor:
    """uint8 ``[h, w]`` (or ``[1, h, w]``) -> float ``[3, h, w]`` in [0, 1], grey repeated to RGB.

    Float ``[3, h, w]`` input in [0, 1] passes through. The model itself then normalises with
    the config's mean/std (torchvision's GeneralizedRCNNTransform).
    """
    if image.dtype == torch.uint8:
        image = image.float().div_(255.0)
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image [h, w], [1, h, w] or [3, h, w], got {tuple(image.shape)}")
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image
