"""Tiny synthetic detector data for tests/test_detector*.py: an HDF5 cache, labels and folds.

Lesions are flat bright rectangles (class 0) and grey ellipses (class 4) on noise, easy enough
for a from-scratch light Faster R-CNN to overfit in a few dozen CPU steps. Original images are
twice the cache size, so every box goes through the original <-> cache scaling.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from cxrdet.classes import CLASS_NAMES, NO_FINDING
from cxrdet.detector.config import DetectorConfig
from cxrdet.preprocess.cache import CacheSettings, CacheWriter

CACHE = 96  # cache long side: tiny, so CPU steps are cheap
ORIG = 2 * CACHE  # original DICOM side
RECT, ELLIPSE = 0, 4  # class_ids drawn


def limit_threads() -> None:
    torch.set_num_threads(1)  # 2 shared cores: one thread per test process
    torch.set_flush_denormal(True)  # denormals make late CPU training steps crawl


def _draw(rng: np.random.Generator, with_lesions: bool, ellipse: bool) -> tuple[np.ndarray, list]:
    image = rng.normal(70, 12, (CACHE, CACHE)).clip(0, 255).astype(np.uint8)
    rows = []
    if not with_lesions:
        return image, rows
    kinds = [RECT] + ([ELLIPSE] if ellipse else [])
    for cls in kinds:
        w, h = (int(v) for v in rng.integers(CACHE // 5, CACHE // 3, 2))
        x, y = int(rng.integers(4, CACHE - w - 4)), int(rng.integers(4, CACHE - h - 4))
        if cls == RECT:
            image[y:y + h, x:x + w] = 200
        else:
            cv2.ellipse(image, (x + w // 2, y + h // 2), (w // 2, h // 2), 0, 0, 360, 140, -1)
        scale = ORIG / CACHE
        rows.append((cls, x * scale, y * scale, (x + w) * scale, (y + h) * scale))
    return image, rows


def make_dataset(root: Path, n_abnormal: int = 6, n_normal: int = 2, n_folds: int = 2, seed: int = 0,
                 readers: int = 1) -> dict[str, Path]:
    """Write cache.h5, train.csv and folds.csv under ``root``; returns their paths."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    writer = CacheWriter(root / "cache.h5", CacheSettings(size=CACHE, voi="auto"))
    label_rows, fold_rows = [], []
    for k in range(n_abnormal + n_normal):
        image_id = f"img{k:03d}"
        image, boxes = _draw(rng, k < n_abnormal, ellipse=k % 2 == 0)
        writer.write(image_id, image, (ORIG, ORIG))
        fold_rows.append((image_id, k % n_folds))
        for r in range(readers):
            rad = f"R{r + 1}"
            if not boxes:
                label_rows.append((image_id, CLASS_NAMES[NO_FINDING], NO_FINDING, rad, "", "", "", ""))
            for cls, *xyxy in boxes:
                jitter = rng.uniform(-2, 2, 4) if r else np.zeros(4)
                label_rows.append((image_id, CLASS_NAMES[cls], cls, rad, *(np.array(xyxy) + jitter).round(1)))
    writer.finish()
    cols = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    pd.DataFrame(label_rows, columns=cols).to_csv(root / "train.csv", index=False)
    pd.DataFrame(fold_rows, columns=["image_id", "fold"]).to_csv(root / "folds.csv", index=False)
    return {"cache": root / "cache.h5", "labels": root / "train.csv", "folds": root / "folds.csv"}


def tiny_config(paths: dict[str, Path], out: Path, **overrides) -> DetectorConfig:
    """A light, fast configuration for CPU tests."""
    values = dict(
        cache=str(paths["cache"]), labels=str(paths["labels"]), folds=str(paths["folds"]), out=str(out),
        model="fasterrcnn_resnet18_fpn", min_size=CACHE, max_size=CACHE, anchor_sizes=[16, 32, 64, 128, 256],
        box_batch_size_per_image=128, batch_size=2, val_batch_size=2, workers=0, optimizer="adamw", lr=1e-3,
        warmup_steps=2, accelerator="cpu", devices="1", epochs=1, log_every_n_steps=1,
    )
    values.update(overrides)
    return DetectorConfig(**values)


def cli_args(paths: dict[str, Path], out: Path, *extra) -> list[str]:
    """``cxrdet train`` arguments matching :func:`tiny_config`."""
    args = [
        "train", "--out", out, "--cache", paths["cache"], "--labels", paths["labels"], "--folds", paths["folds"],
        "--arch", "fasterrcnn_resnet18_fpn", "--min-size", CACHE, "--max-size", CACHE,
        "--anchor-sizes", 16, 32, 64, 128, 256, "--box-batch-size-per-image", 128, "--batch-size", 2, "--val-batch-size", 2, "--workers", 0,
        "--optimizer", "adamw", "--lr", 1e-3, "--warmup-steps", 2, "--accelerator", "cpu",
        "--log-every-n-steps", 1, *extra,
    ]
    return [str(a) for a in args]
