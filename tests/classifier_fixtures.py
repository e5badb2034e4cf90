"""Tiny synthetic classifier data for tests/test_classifier*.py.

VinBigData-like: a cache of noise images where "Aortic enlargement" (class 0) is a bright
rectangle, "Cardiomegaly" (class 3) a large grey disc and "Pleural effusion" (class 10) a bright
band at the bottom; three readers each mark a drawn finding with probability 0.9, so the labels
are soft. ImageFolder-like: PNGs of three classes told apart by a pattern (dark square, bright disc, bars).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from cxrdet.classes import CLASS_NAMES, NO_FINDING
from cxrdet.preprocess.cache import CacheSettings, CacheWriter

CACHE = 64  # cache long side
ORIG = 2 * CACHE  # original size, so boxes go through the scaling
DRAWN = (0, 3, 10)  # class ids drawn
READERS = ("R1", "R2", "R3")


def limit_threads() -> None:
    torch.set_num_threads(1)  # 2 shared cores: one thread per test process
    torch.set_flush_denormal(True)


def _draw(rng: np.random.Generator, present: list[int]) -> np.ndarray:
    image = rng.normal(70, 15, (CACHE, CACHE)).clip(0, 255).astype(np.float32)
    for cls in present:
        if cls == 0:
            x, y = (int(v) for v in rng.integers(4, CACHE - 24, 2))
            image[y:y + 16, x:x + 16] = 210
        elif cls == 3:
            cv2.circle(image, (CACHE // 2 + int(rng.integers(-6, 7)), CACHE // 2), CACHE // 4, 140, -1)
        elif cls == 10:
            image[-CACHE // 6:, :] += 90
    return image.clip(0, 255).astype(np.uint8)


def make_vinbig(root: Path, n: int = 160, n_folds: int = 2, seed: int = 0,
                settings: CacheSettings | None = None) -> dict[str, Path]:
    """cache.h5, train.csv (3 readers) and folds.csv under ``root``; about 1/3 normal images."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    writer = CacheWriter(root / "cache.h5", settings or CacheSettings(size=CACHE, voi="auto"))
    rows, folds = [], []
    for k in range(n):
        image_id = f"img{k:04d}"
        present = [c for c, p in zip(DRAWN, (0.45, 0.35, 0.3)) if rng.random() < p]
        writer.write(image_id, _draw(rng, present), (ORIG, ORIG))
        folds.append((image_id, k % n_folds))
        for rad in READERS:
            marked = [c for c in present if rng.random() < 0.9]
            if not marked:
                rows.append((image_id, CLASS_NAMES[NO_FINDING], NO_FINDING, rad, "", "", "", ""))
            for c in marked:
                rows.append((image_id, CLASS_NAMES[c], c, rad, 10.0, 10.0, 60.0, 60.0))
    writer.finish()
    cols = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    pd.DataFrame(rows, columns=cols).to_csv(root / "train.csv", index=False)
    pd.DataFrame(folds, columns=["image_id", "fold"]).to_csv(root / "folds.csv", index=False)
    return {"cache": root / "cache.h5", "labels": root / "train.csv", "folds": root / "folds.csv"}


FOLDER_CLASSES = ("Bars", "Disc", "Square")


def _shape_image(rng: np.random.Generator, cls: str, side: int = 48) -> np.ndarray:
    image = rng.normal(80, 20, (side, side)).clip(0, 255).astype(np.uint8)
    c = side // 2 + int(rng.integers(-4, 5))
    if cls == "Square":
        cv2.rectangle(image, (c - 12, c - 12), (c + 12, c + 12), 0, -1)  # a dark square
    elif cls == "Disc":
        cv2.circle(image, (c, c), 11, 220, -1)
    else:
        for x in range(4, side - 4, 10):
            cv2.rectangle(image, (x, 6), (x + 3, side - 6), 220, -1)
    return image


def make_image_folder(root: Path, per_class: int = 24, seed: int = 0) -> Path:
    """``root/CLASS/img_K.png`` for three shape classes; returns ``root``."""
    rng = np.random.default_rng(seed)
    for cls in FOLDER_CLASSES:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            cv2.imwrite(str(root / cls / f"img_{k:03d}.png"), _shape_image(rng, cls))
    return root


def write_folds(path: Path, ids: list[str], n_folds: int = 2) -> Path:
    pd.DataFrame({"image_id": sorted(ids), "fold": [k % n_folds for k in range(len(ids))]}).to_csv(path, index=False)
    return path


def train_args(paths: dict[str, Path], out: Path, *extra) -> list[str]:
    """``cxrdet train-classifier`` arguments for a light, fast CPU run."""
    args = ["train-classifier", "--out", out, "--cache", paths["cache"], "--labels", paths["labels"],
            "--folds", paths["folds"], "--arch", "resnet18", "--size", CACHE, "--batch-size", 16,
            "--val-batch-size", 32, "--workers", 0, "--lr", 2e-3, "--warmup-steps", 5, "--accelerator", "cpu",
            "--devices", 1, "--log-every-n-steps", 1, *extra]
    return [str(a) for a in args]


LOCAL_CACHE = 128  # the cache of the localisation fixture: layer4 of a ResNet is 4x4 at this size
LESION = 20  # side of a drawn lesion in cache pixels (~2.4% of the image: chance is low)


def make_localised(root: Path, n: int = 120, seed: int = 0) -> dict[str, Path]:
    """Like :func:`make_vinbig`, but each finding is drawn at a random place and every reader's box
    is where it was drawn (original = 2x cache pixels): class 0 a bright square, class 3 a grey disc."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    side = LOCAL_CACHE
    writer = CacheWriter(root / "cache.h5", CacheSettings(size=side, voi="auto"))
    rows, folds = [], []
    for k in range(n):
        image_id = f"loc{k:04d}"
        image = rng.normal(70, 15, (side, side)).clip(0, 255).astype(np.float32)
        boxes = []
        for cls, p in ((0, 0.5), (3, 0.4)):
            if rng.random() >= p:
                continue
            x, y = (int(v) for v in rng.integers(4, side - LESION - 4, 2))
            if cls == 0:
                image[y:y + LESION, x:x + LESION] = 215
            else:
                cv2.circle(image, (x + LESION // 2, y + LESION // 2), LESION // 2, 150, -1)
            boxes.append((cls, [2.0 * x, 2.0 * y, 2.0 * (x + LESION), 2.0 * (y + LESION)]))
        writer.write(image_id, image.clip(0, 255).astype(np.uint8), (2 * side, 2 * side))
        folds.append((image_id, k % 2))
        for rad in READERS:
            if not boxes:
                rows.append((image_id, CLASS_NAMES[NO_FINDING], NO_FINDING, rad, "", "", "", ""))
            for cls, b in boxes:
                rows.append((image_id, CLASS_NAMES[cls], cls, rad, *b))
    writer.finish()
    cols = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    pd.DataFrame(rows, columns=cols).to_csv(root / "train.csv", index=False)
    pd.DataFrame(folds, columns=["image_id", "fold"]).to_csv(root / "folds.csv", index=False)
    return {"cache": root / "cache.h5", "labels": root / "train.csv", "folds": root / "folds.csv"}
