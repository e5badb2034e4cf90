"""Whole-image pixel features for the normal/abnormal gate (keys prefixed ``px_``).

Computed on a fixed 256 px (long side) copy, so the features do not depend on the cache size:
intensity distribution (percentiles, moments, entropy), texture (edges, gradients, Laplacian
sharpness), and anatomy-level layout (left/right and upper/lower asymmetries, centre vs border),
which change with effusions, consolidations, an enlarged heart or a pneumothorax.
"""

from __future__ import annotations

import cv2
import numpy as np

from cxrdet.boxes import resized_hw

FEATURE_SIZE = 256  # long side the features are computed at
PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)


def pixel_features(image: np.ndarray) -> dict[str, float]:
    """Features of a uint8 ``[h, w]`` display image (bright bone), as ``{"px_...": float}``."""
    if image.dtype != np.uint8 or image.ndim != 2 or image.size == 0:
        raise ValueError(f"expected a non-empty uint8 [h, w] image, got {image.dtype} {image.shape}")
    h, w = resized_hw(image.shape, FEATURE_SIZE)
    small = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    x = small.astype(np.float32) / 255.0
    feats: dict[str, float] = {}
    feats.update(_distribution(small, x))
    feats.update(_texture(small, x))
    feats.update(_layout(x))
    feats["px_aspect"] = float(image.shape[1] / image.shape[0])
    return {k: float(v) for k, v in feats.items()}


def _distribution(small: np.ndarray, x: np.ndarray) -> dict[str, float]:
    out = {f"px_p{p:02d}": v for p, v in zip(PERCENTILES, np.percentile(x, PERCENTILES))}
    # a flat image has std 0 exactly; float32 rounding would give ~6e-8 and a spurious skew
    mean, std = float(x.mean()), 0.0 if small.min() == small.max() else float(x.std())
    z = (x - mean) / std if std > 0 else np.zeros_like(x)
    hist = np.bincount(small.ravel(), minlength=256).astype(np.float64)
    prob = hist[hist > 0] / hist.sum()
    out.update({
        "px_mean": mean,
        "px_std": std,
        "px_skew": float((z ** 3).mean()),
        "px_kurtosis": float((z ** 4).mean() - 3.0) if std > 0 else 0.0,
        "px_entropy": float(-(prob * np.log2(prob)).sum()),  # bits, 0..8
        "px_dark_frac": float((small < 32).mean()),
        "px_bright_frac": float((small > 223).mean()),
    })
    return out


def _texture(small: np.ndarray, x: np.ndarray) -> dict[str, float]:
    gx = cv2.Sobel(x, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(x, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.hypot(gx, gy)
    edges = cv2.Canny(small, 50, 150)
    return {
        "px_edge_density": float((edges > 0).mean()),
        "px_grad_mean": float(mag.mean()),
        "px_grad_std": float(mag.std()),
        "px_grad_xy_ratio": float(np.abs(gx).mean() / (np.abs(gy).mean() + 1e-6)),
        "px_laplacian_var": float(cv2.Laplacian(x, cv2.CV_32F).var()),
    }


def _layout(x: np.ndarray) -> dict[str, float]:
    h, w = x.shape
    left, right = x[:, : w // 2], x[:, w - w // 2:][:, ::-1]
    top, bottom = x[: h // 2], x[h - h // 2:]
    mh, mw = h // 4, w // 4
    centre = x[mh: h - mh, mw: w - mw]
    border_sum = x.sum() - centre.sum()
    border_mean = border_sum / max(1, x.size - centre.size)
    return {
        "px_lr_absdiff": float(np.abs(left - right).mean()),  # mirrored halves
        "px_lr_mean_diff": float(left.mean() - right.mean()),
        "px_tb_mean_diff": float(top.mean() - bottom.mean()),
        "px_centre_border_diff": float(centre.mean() - border_mean),
        "px_lower_lr_diff": float(left[h // 2:].mean() - right[h // 2:].mean()),  # costophrenic
    }
