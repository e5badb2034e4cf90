"""Labels for synthetic images: three jittery readers (train) and consensus boxes (test).

Readers follow VinBigData: 3 of 17 radiologists (R1..R17) read each train image; each draws
its own slightly different box per finding, sometimes misses one, rarely marks something that
is not there, and a reader who sees nothing writes a "No finding" row with empty coordinates.
Misses are spread so that every true finding is seen by at least 2 of 3 readers: fusing the
readers (2-of-3 agreement) recovers the truth, as the challenge's consensus does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrdet.classes import CLASS_NAMES, NAME_TO_ID, NO_FINDING

LABEL_COLUMNS = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
READERS = tuple(f"R{i}" for i in range(1, 18))
# a few readers read far more images than the rest, as in the challenge's train set
READER_WEIGHTS = np.array([3.0 if r in {"R8", "R9", "R10"} else 1.0 for r in READERS])
EXTRA_CLASSES = tuple(NAME_TO_ID[n] for n in ("Nodule/Mass", "Other lesion", "Pleural thickening"))
CONSENSUS_ID = "consensus"


@dataclass(frozen=True)
class ReaderConfig:
    miss_rate: float = 0.2  # per reader per finding; the brief asks for 15-25%
    jitter: float = 0.04  # std of each box edge, as a fraction of the box size
    extra_rate: float = 0.03  # per reader per abnormal image: a box where there is nothing


def pick_readers(rng: np.random.Generator, k: int = 3) -> list[str]:
    idx = rng.choice(len(READERS), size=k, replace=False, p=READER_WEIGHTS / READER_WEIGHTS.sum())
    return [READERS[i] for i in idx]


def jitter_box(box: np.ndarray, hw: tuple[int, int], rng: np.random.Generator, jitter: float) -> np.ndarray:
    """One reader's version of a box: edges moved by a few % of its size, whole pixels,
    inside the image and at least one pixel wide and high."""
    w, h = box[2] - box[0], box[3] - box[1]
    b = box + rng.normal(0, jitter, 4) * np.array([w, h, w, h])
    b = np.round(b)
    b[[0, 2]] = b[[0, 2]].clip(0, hw[1])
    b[[1, 3]] = b[[1, 3]].clip(0, hw[0])
    for lo, hi, size in ((0, 2, hw[1]), (1, 3, hw[0])):
        if b[hi] - b[lo] < 1:
            b[lo] = min(b[lo], size - 1)
            b[hi] = b[lo] + 1
    return b


def _extra_box(hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = hw
    size = rng.uniform(0.03, 0.08) * w
    x, y = rng.uniform(0.2, 0.8) * w, rng.uniform(0.25, 0.7) * h
    return np.round(np.array([x - size / 2, y - size / 2, x + size / 2, y + size / 2]))


def _row(image_id: str, class_id: int, rad_id: str, box: np.ndarray | None) -> dict:
    coords = ["", "", "", ""] if box is None else [f"{float(v):.1f}" for v in box]
    return dict(zip(LABEL_COLUMNS, [image_id, CLASS_NAMES[class_id], str(class_id), rad_id, *coords]))


def reader_rows(image_id: str, boxes: np.ndarray, class_ids: np.ndarray, hw: tuple[int, int],
                rng: np.random.Generator, cfg: ReaderConfig = ReaderConfig()) -> list[dict]:
    """train.csv rows of one image: 3 readers' boxes of the true findings ``boxes``/``class_ids``."""
    readers = pick_readers(rng)
    n = len(class_ids)
    seen = np.ones((n, 3), dtype=bool)
    for i in range(n):  # at most one reader misses a finding, per-reader rate = miss_rate
        if rng.random() < min(1.0, 3 * cfg.miss_rate):
            seen[i, rng.integers(3)] = False
    rows = []
    for r, rad_id in enumerate(readers):
        marks = [(int(class_ids[i]), jitter_box(boxes[i], hw, rng, cfg.jitter))
                 for i in range(n) if seen[i, r]]
        if n and rng.random() < cfg.extra_rate:
            marks.append((int(rng.choice(EXTRA_CLASSES)), _extra_box(hw, rng)))
        if not marks:
            rows.append(_row(image_id, NO_FINDING, rad_id, None))
        rows.extend(_row(image_id, c, rad_id, b) for c, b in marks)
    return rows


def consensus_rows(image_id: str, boxes: np.ndarray, class_ids: np.ndarray) -> list[dict]:
    """test.csv rows of one image: the true boxes (one per class), or one "No finding" row."""
    if len(class_ids) == 0:
        return [_row(image_id, NO_FINDING, CONSENSUS_ID, None)]
    return [_row(image_id, int(c), CONSENSUS_ID, b) for c, b in zip(class_ids, boxes)]
