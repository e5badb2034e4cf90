"""Training data: the HDF5 cache + a label source + folds as a Dataset and a LightningDataModule.

Images are read from the cache at the cache's size and resized to the classifier's ``size`` on
the fly (one cache serves the detector and every classifier). Labels naming images that are not
in the cache are listed and left out; a class without a positive image in the training folds
is warned about by name. The HDF5 file is opened lazily in each process.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from cxrdet.classifier.config import ClassifierConfig
from cxrdet.classifier.labels import LabelSet, read_label_source
from cxrdet.classifier.transforms import AugmentSettings, augment, resize_square
from cxrdet.errors import UserError
from cxrdet.formats.folds import read_folds

SHOWN_IDS = 10  # ids quoted in one message; the count is always given


@dataclass
class ClassifierTable:
    """Everything the data side knows about one fold split."""

    labels: LabelSet  # restricted to images in the cache and the folds
    train_ids: list[str]
    val_ids: list[str]
    cache_size: int
    cache_voi: str
    pos_weight: list[float]
    notes: list[str] = field(default_factory=list)  # warnings for the run log

    def targets(self, ids: list[str]) -> np.ndarray:
        return self.labels.subset(ids).targets


def _shown(ids: list[str]) -> str:
    return ", ".join(sorted(ids)[:SHOWN_IDS]) + (" ..." if len(ids) > SHOWN_IDS else "")


def _cache_info(path: str) -> tuple[set[str], int, str]:
    from cxrdet.preprocess.cache import CacheReader

    with CacheReader(path) as reader:  # closed again: training processes reopen it lazily
        return set(reader.ids), int(reader.settings.size), str(reader.settings.voi)


def positive_weights(train: LabelSet, cap: float) -> tuple[list[float], list[str]]:
    """BCE ``pos_weight`` = negatives / positives per class (soft counts), capped; and the names
    of classes with no positive at all (weight 1: nothing to up-weight)."""
    if train.task != "multilabel":
        return [], [n for n, k in zip(train.class_names, np.bincount(train.targets, minlength=len(train.class_names)))
                    if k == 0]
    pos = train.targets.sum(axis=0).astype(np.float64)
    neg = len(train.image_ids) - pos
    weights = np.where(pos > 0, np.minimum(neg / np.maximum(pos, 1e-12), cap), 1.0)
    return [float(w) for w in weights], [n for n, p in zip(train.class_names, pos) if p == 0]


def load_table(cfg: ClassifierConfig) -> ClassifierTable:
    """Read cache ids, labels and folds; check them against each other; compute pos_weight."""
    if not os.path.exists(cfg.cache):
        raise UserError(f"cache file {cfg.cache} does not exist; make it with `cxrdet prepare --out {cfg.cache}`")
    cached, cache_size, cache_voi = _cache_info(cfg.cache)
    labels = read_label_source(cfg.labels)
    notes = []
    absent = [i for i in labels.image_ids if i not in cached]
    if absent:
        notes.append(f"{len(absent)} labelled image(s) of {cfg.labels} are not in cache {cfg.cache} and are left "
                     f"out: {_shown(absent)} (prepare them into the cache to use them)")
    folds = read_folds(cfg.folds)
    ids = [i for i in labels.image_ids if i in cached]
    no_fold = [i for i in ids if i not in folds]
    if no_fold:
        raise UserError(f"{len(no_fold)} image(s) of labels {cfg.labels} have no fold in {cfg.folds}: "
                        f"{_shown(no_fold)}. Rerun `cxrdet split` on this label file.")
    if cfg.fold not in set(folds.values()):
        raise UserError(f"fold {cfg.fold} is not in {cfg.folds} (folds there: {sorted(set(folds.values()))})")
    train_ids = [i for i in ids if folds[i] != cfg.fold]
    val_ids = [i for i in ids if folds[i] == cfg.fold]
    if not train_ids or not val_ids:
        raise UserError(f"fold {cfg.fold} of {cfg.folds} leaves {len(train_ids)} training and {len(val_ids)} "
                        "validation images of the cache; both need at least one. Pick another --fold.")
    labels = labels.subset(ids)
    weights, empty = positive_weights(labels.subset(train_ids), cfg.max_pos_weight)
    if empty:
        notes.append(f"warning: no positive example in the training folds for class(es) {', '.join(empty)}: "
                     "the classifier cannot learn them from this split")
    return ClassifierTable(labels, train_ids, val_ids, cache_size, cache_voi, weights, notes)


def print_notes(table: ClassifierTable) -> None:
    for note in table.notes:
        print(f"train-classifier: {note}", file=sys.stderr)


class ClassifierDataset(Dataset):
    """``(uint8 [size, size] image, target, image_id)`` per image; augmented when settings given."""

    def __init__(self, cache_path: str, image_ids: list[str], targets: np.ndarray, size: int,
                 augment_settings: AugmentSettings | None = None):
        self.cache_path, self.image_ids, self.size = cache_path, list(image_ids), int(size)
        self.targets = torch.as_tensor(targets)
        self.augment = augment_settings
        self._reader, self._pid = None, None

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

    def __getitem__(self, index: int):
        image_id = self.image_ids[index]
        image = resize_square(self.reader().read(image_id)[0], self.size)
        if self.augment is not None:
            # torch's generator: seeded per worker by the DataLoader from the seeded main process
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
            image = augment(image, rng, self.augment)
        return torch.from_numpy(np.ascontiguousarray(image)), self.targets[index], image_id


class ClassifierDataModule(pl.LightningDataModule):
    def __init__(self, cfg: ClassifierConfig, table: ClassifierTable | None = None):
        super().__init__()
        self.cfg, self.table = cfg, table

    def setup(self, stage: str | None = None) -> None:
        if self.table is None:
            self.table = load_table(self.cfg)

    def _loader(self, ids: list[str], batch_size: int, train: bool) -> DataLoader:
        aug = AugmentSettings.from_config(self.cfg) if train else None
        ds = ClassifierDataset(self.cfg.cache, ids, self.table.targets(ids), self.cfg.size, aug)
        workers = self.cfg.workers
        # Lightning swaps in a DistributedSampler under DDP (shuffled for training; validation
        # padding repeats are removed by image id before the metric).
        return DataLoader(ds, batch_size=batch_size, shuffle=train, num_workers=workers, drop_last=False,
                          pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.table.train_ids, self.cfg.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.table.val_ids, self.cfg.val_batch_size, train=False)
