"""The training table: cache sizes + labels + folds checked against each other, boxes fused.

Torch-free, so the label exporters (``cxrdet export-labels``) build exactly the targets the
detector trains on without importing torch. Targets are the readers' boxes fused per image
(``cfg.fusion``), scaled from original DICOM pixels to cache pixels; images without any
finding have empty targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.boxes import HW, resized_hw, scale_boxes
from cxrdet.classes import class_to_label
from cxrdet.detections import Detections
from cxrdet.detector.config import DetectorConfig
from cxrdet.errors import UserError
from cxrdet.formats.folds import read_folds

SHOWN_IDS = 10  # missing ids listed in an error message; the count is always given


@dataclass
class TrainingTable:
    """Everything the data side knows about the images of one fold split."""

    targets: dict[str, tuple[np.ndarray, np.ndarray]]  # id -> (boxes [N,4] cache px float32, torchvision labels)
    orig_hw: dict[str, HW]
    train_ids: list[str]
    val_ids: list[str]
    val_gt: pd.DataFrame  # fused labels of the validation images, ORIGINAL pixels (class 14 rows kept)
    cache_size: int
    cache_voi: str


def _missing_error(ids: list[str], what: str, fix: str) -> UserError:
    shown = ", ".join(sorted(ids)[:SHOWN_IDS]) + (" ..." if len(ids) > SHOWN_IDS else "")
    return UserError(f"{len(ids)} image id(s) {what}: {shown}. {fix}")


def _open_cache(path: str):
    from cxrdet.preprocess.cache import CacheReader

    if not Path(path).is_file():
        raise UserError(f"cache file {path} does not exist; make it with `cxrdet prepare --out {path}`")
    return CacheReader(path)


def _cache_info(path: str) -> tuple[dict[str, HW], int, str]:
    reader = _open_cache(path)
    try:
        sizes = {i: tuple(int(v) for v in reader.orig_hw(i)) for i in reader.ids}
        settings = reader.settings
    finally:
        close = getattr(reader, "close", None)
        if close is not None:
            close()  # the training processes reopen it lazily; no handle crosses a fork
    return sizes, int(settings.size), str(getattr(settings, "voi", ""))


def load_table(cfg: DetectorConfig) -> TrainingTable:
    """Read cache, labels and folds; check their ids against each other; fuse and scale boxes."""
    from cxrdet.fusion import fuse_readers
    from cxrdet.formats.labels import read_labels

    sizes, cache_size, cache_voi = _cache_info(cfg.cache)
    labels = read_labels(cfg.labels, image_sizes=sizes)
    label_ids = set(labels["image_id"])
    missing = sorted(label_ids - set(sizes))
    if missing:
        raise _missing_error(
            missing, f"of labels {cfg.labels} are not in cache {cfg.cache}",
            "Prepare those DICOMs into the cache (cxrdet prepare), or drop their rows from the labels.",
        )
    folds = read_folds(cfg.folds)
    for ids, what in (
        (sorted(label_ids - set(folds)), f"of labels {cfg.labels} have no fold in {cfg.folds}"),
        (sorted(set(folds) - label_ids), f"of folds {cfg.folds} are not in labels {cfg.labels}"),
    ):
        if ids:
            raise _missing_error(ids, what, "Rerun `cxrdet split` on this label file.")
    if cfg.fold not in set(folds.values()):
        raise UserError(f"fold {cfg.fold} is not in {cfg.folds} (folds there: {sorted(set(folds.values()))})")

    fused = fuse_readers(labels, method=cfg.fusion, iou_thr=cfg.fusion_iou, image_sizes=sizes)
    order = list(pd.unique(labels["image_id"]))
    targets = _cache_targets(fused, order, sizes, cache_size)
    val_ids = [i for i in order if folds[i] == cfg.fold]
    train_ids = [i for i in order if folds[i] != cfg.fold]
    if not train_ids or not val_ids:
        raise UserError(
            f"fold {cfg.fold} of {cfg.folds} leaves {len(train_ids)} training and {len(val_ids)} validation "
            "images; both need at least one: split into 2 or more folds (`cxrdet split --n-folds K`) or "
            f"validate on a fold that {cfg.folds} holds."
        )
    val_gt = fused[fused["image_id"].isin(set(val_ids))].reset_index(drop=True)
    return TrainingTable(targets, {i: sizes[i] for i in order}, train_ids, val_ids, val_gt, cache_size, cache_voi)


def _cache_targets(fused: pd.DataFrame, ids: list[str], sizes: dict[str, HW], cache_size: int):
    """Per image: finding boxes scaled original -> cache pixels, and torchvision labels."""
    from cxrdet.formats.labels import labels_by_image

    per_image = labels_by_image(fused)  # finding boxes only; a normal image has none
    out = {}
    for image_id in ids:
        det, orig = per_image.get(image_id, Detections.empty()), sizes[image_id]
        scaled = scale_boxes(det.boxes, orig, resized_hw(orig, cache_size))
        out[image_id] = (scaled.astype(np.float32), class_to_label(det.class_ids))
    return out
