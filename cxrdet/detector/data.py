"""Training data: the HDF5 cache + fused labels + folds as a Dataset and a LightningDataModule.

Targets are the readers' boxes fused per image (``cfg.fusion``), scaled from original DICOM
pixels to cache pixels. Images without any finding are real negatives (empty targets), of which
:class:`EpochSampler` draws a configurable share per epoch. The HDF5 file is opened lazily in
each process (a handle must never cross fork/spawn).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from cxrdet.boxes import HW, resized_hw, scale_boxes
from cxrdet.classes import class_to_label
from cxrdet.detections import Detections
from cxrdet.detector.config import DetectorConfig
from cxrdet.detector.transforms import AugmentSettings, augment
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


class DetectionDataset(Dataset):
    """(uint8 image tensor [h, w], target dict) per image; augmented when a sample seed is given.

    A key is an index, or ``(index, sample_seed)`` from :class:`EpochSampler`, which makes each
    sample's augmentation a function of the seed alone (same result in any worker).
    """

    def __init__(self, cache_path: str, image_ids: list[str], table: TrainingTable,
                 augment_settings: AugmentSettings | None = None):
        self.cache_path = cache_path
        self.image_ids = list(image_ids)
        self.targets = {i: table.targets[i] for i in self.image_ids}
        self.orig_hw = {i: table.orig_hw[i] for i in self.image_ids}
        self.augment = augment_settings
        self._reader = None
        self._pid = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_reader"], state["_pid"] = None, None  # h5py handles never cross processes
        return state

    def reader(self):
        if self._reader is None or self._pid != os.getpid():
            from cxrdet.preprocess.cache import CacheReader

            self._reader, self._pid = CacheReader(self.cache_path), os.getpid()
        return self._reader

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key):
        index, sample_seed = key if isinstance(key, tuple) else (key, None)
        image_id = self.image_ids[index]
        image, _ = self.reader().read(image_id)
        boxes, labels = self.targets[image_id]
        if self.augment is not None and sample_seed is not None:
            rng = np.random.default_rng(sample_seed)
            image, boxes, labels = augment(image, boxes.astype(np.float64), labels, rng, self.augment)
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, np.int64)),
            "image_id": image_id,
            "orig_hw": torch.tensor(self.orig_hw[image_id], dtype=torch.int64),
        }
        return torch.from_numpy(np.ascontiguousarray(image)), target


def collate(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    """torchvision detection style: a list of images (sizes may differ) and a list of targets."""
    images, targets = zip(*batch)
    return list(images), list(targets)


class EpochSampler(Sampler):
    """Every image with findings once per epoch plus a share of normal images; sharded over ranks.

    ``normal_fraction`` f makes normals about f of the epoch (all of them when there are too few;
    f < 0 keeps every image once). Yields ``(index, sample_seed)`` so augmentation is fixed by
    (seed, epoch, position) and identical however many workers or ranks run it.
    """

    def __init__(self, positives: list[int], negatives: list[int], normal_fraction: float, seed: int,
                 num_replicas: int = 1, rank: int = 0):
        self.positives, self.negatives = list(positives), list(negatives)
        self.normal_fraction, self.seed = normal_fraction, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _n_negatives(self) -> int:
        if self.normal_fraction < 0 or not self.positives:
            return len(self.negatives)
        f = self.normal_fraction
        return min(len(self.negatives), int(round(len(self.positives) * f / (1 - f))))

    def epoch_order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        negs = rng.permutation(np.asarray(self.negatives, dtype=np.int64))[: self._n_negatives()]
        return rng.permutation(np.concatenate([np.asarray(self.positives, dtype=np.int64), negs]))

    def __len__(self) -> int:
        total = len(self.positives) + self._n_negatives()
        return -(-total // self.num_replicas)

    def __iter__(self):
        order = self.epoch_order()
        padded = np.resize(order, len(self) * self.num_replicas)  # wrap around so ranks get equal counts
        seeds = np.random.SeedSequence([self.seed, self.epoch]).generate_state(len(padded), dtype=np.uint64)
        for pos in range(self.rank, len(padded), self.num_replicas):
            yield int(padded[pos]), int(seeds[pos])


class DetectorDataModule(pl.LightningDataModule):
    def __init__(self, cfg: DetectorConfig, table: TrainingTable | None = None):
        super().__init__()
        self.cfg = cfg
        self.table = table

    def setup(self, stage: str | None = None) -> None:
        if self.table is None:
            self.table = load_table(self.cfg)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, dataset, batch_size: int, sampler) -> DataLoader:
        workers = self.cfg.workers
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
            pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0, drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        t = self.table
        ds = DetectionDataset(self.cfg.cache, t.train_ids, t, AugmentSettings.from_config(self.cfg))
        has_box = [len(ds.targets[i][1]) > 0 for i in ds.image_ids]
        pos = [k for k, h in enumerate(has_box) if h]
        neg = [k for k, h in enumerate(has_box) if not h]
        world, rank = self._world()
        sampler = EpochSampler(pos, neg, self.cfg.normal_fraction, self.cfg.seed, world, rank)
        return self._loader(ds, self.cfg.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        ds = DetectionDataset(self.cfg.cache, self.table.val_ids, self.table, None)
        world, rank = self._world()
        # Padding duplicates of DistributedSampler are removed by image id before the metric.
        sampler = DistributedSampler(ds, world, rank, shuffle=False) if world > 1 else None
        return self._loader(ds, self.cfg.val_batch_size, sampler)
