"""Label sources, recognised from what ``--labels`` names:

- a VinBigData ``train.csv`` (header ``image_id,class_name,class_id,rad_id,x_min,...``):
  multi-label, 15 targets per image = the 14 findings as SOFT labels (the share of the image's
  readers who marked the class) + ``abnormal`` (the share of readers who marked any finding);
- an NIH ChestX-ray14 style CSV (``Image Index``, ``Finding Labels``): multi-label over the
  findings present in the file (:mod:`cxrdet.formats.nih`);
- a folder with one sub-folder per class (ImageFolder layout): multi-class, class names from
  the sub-folders, image ids as ``cxrdet prepare --image-dir`` makes them from that folder.

For metrics a soft label counts as positive from :data:`POSITIVE_AT` (a majority of readers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import pandas as pd

from cxrdet.classes import CLASS_NAMES, NO_FINDING, NUM_FINDINGS
from cxrdet.errors import UserError
from cxrdet.formats.csvrows import csv_records
from cxrdet.formats.labels import LABEL_COLUMNS, read_labels
from cxrdet.formats.nih import looks_like_nih, read_nih_labels
from cxrdet.preprocess.image_files import list_image_files

ABNORMAL = "abnormal"
VINBIGDATA_CLASSES = [*CLASS_NAMES[:NUM_FINDINGS], ABNORMAL]
POSITIVE_AT = 0.5  # soft label >= 0.5: at least half the readers marked it (2 of 3 in VinBigData)


@dataclass
class LabelSet:
    """Targets of one label source, one row per image."""

    source: str  # vinbigdata | nih | folder
    task: str  # multilabel | multiclass
    class_names: list[str]
    image_ids: list[str]
    targets: np.ndarray  # multilabel: float32 [n, C] in [0, 1]; multiclass: int64 [n] class index

    def positives(self) -> np.ndarray:
        """Binary [n, C] truth for metrics (one-hot for multi-class)."""
        if self.task == "multiclass":
            return np.eye(len(self.class_names), dtype=np.int64)[self.targets]
        return (self.targets >= POSITIVE_AT).astype(np.int64)

    def subset(self, ids: list[str]) -> "LabelSet":
        index = {k: i for i, k in enumerate(self.image_ids)}
        rows = [index[k] for k in ids]
        return LabelSet(self.source, self.task, self.class_names, list(ids), self.targets[rows])


def read_label_source(path: str | os.PathLike) -> LabelSet:
    """The :class:`LabelSet` of ``path``, whichever of the three sources it is."""
    path = Path(path)
    if path.is_dir():
        return folder_labels(path)
    if not path.is_file():
        raise UserError(f"labels {path} does not exist; expected a VinBigData train.csv, an NIH-style CSV "
                        "(Image Index, Finding Labels) or a folder with one sub-folder per class")
    columns = _header(path)
    if all(c in columns for c in LABEL_COLUMNS):
        return vinbigdata_labels(path)
    if looks_like_nih(columns):
        nih = read_nih_labels(path)
        return LabelSet("nih", "multilabel", nih.class_names, nih.image_ids, nih.targets)
    raise UserError(f"{path}:1: header {','.join(columns)} is neither a VinBigData train.csv "
                    f"({','.join(LABEL_COLUMNS)}) nor an NIH-style CSV (Image Index, Finding Labels); "
                    "for a folder per class, pass the folder itself")


def _header(path: Path) -> list[str]:
    """The first non-blank record of a CSV (blank lines before it are skipped, as pandas does)."""
    for _, row in csv_records(path):  # a quote left open or bad bytes: UserError naming the line
        if any(cell.strip() for cell in row):
            return [cell.strip() for cell in row]
    raise UserError(f"{path}: the file is empty; expected a VinBigData train.csv or an NIH-style CSV header")


def vinbigdata_labels(path: str | os.PathLike) -> LabelSet:
    """15 soft targets per image: reader share per finding, then the reader share of 'abnormal'."""
    frame = read_labels(path)
    ids = list(pd.unique(frame["image_id"]))
    row = pd.Index(ids).get_indexer(frame["image_id"])
    readers = frame.groupby("image_id", sort=False)["rad_id"].nunique().reindex(ids).to_numpy(np.float32)
    marked = np.zeros((len(ids), NUM_FINDINGS + 1), np.float32)
    cid = frame["class_id"].to_numpy(np.int64)
    finding = cid != NO_FINDING
    # one mark per (image, reader, class): a reader's several boxes of a class count once
    pairs = pd.DataFrame({"row": row[finding], "rad": frame["rad_id"].to_numpy()[finding], "cid": cid[finding]})
    for (r, c), n in pairs.drop_duplicates().groupby(["row", "cid"]).size().items():
        marked[r, c] = n
    any_finding = pairs.drop_duplicates(["row", "rad"]).groupby("row").size()
    marked[any_finding.index.to_numpy(), NUM_FINDINGS] = any_finding.to_numpy()
    return LabelSet("vinbigdata", "multilabel", list(VINBIGDATA_CLASSES), ids, marked / readers[:, None])


def folder_labels(folder: Path) -> LabelSet:
    """One class per sub-folder of ``folder`` (images at any depth below it), sorted by name."""
    by_id, _ = list_image_files(folder)  # collisions are prepare's to report; they are not in the cache
    classes: dict[str, str] = {}
    for image_id, file in by_id.items():
        parts = PurePath(file.relative_to(folder)).parts
        if len(parts) >= 2:  # files directly in the folder have no class (torchvision ImageFolder too)
            classes[image_id] = parts[0]
    names = sorted(set(classes.values()))
    if len(names) < 2:
        raise UserError(f"labels folder {folder} has {len(names)} class sub-folder(s) with images ({names}); "
                        "a multi-class classifier needs at least 2 (one sub-folder of images per class)")
    col = {n: k for k, n in enumerate(names)}
    ids = sorted(classes)
    return LabelSet("folder", "multiclass", names, ids, np.array([col[classes[i]] for i in ids], np.int64))
