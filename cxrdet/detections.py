"""One image's detections: the unit passed between detector, gate, submission and metric."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrdet.boxes import as_boxes
from cxrdet.classes import NO_FINDING, NORMAL_BOX

DET_COLUMNS = ["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"]


@dataclass
class Detections:
    """Boxes (xyxy pixels of a named image, see :mod:`cxrdet.boxes`), scores and class_ids."""

    boxes: np.ndarray  # [N, 4] float64
    scores: np.ndarray  # [N] float64 in [0, 1]
    class_ids: np.ndarray  # [N] int64, 0..14

    def __post_init__(self) -> None:
        self.boxes = as_boxes(self.boxes)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        n = len(self.boxes)
        if len(self.scores) != n or len(self.class_ids) != n:
            raise ValueError(
                f"Detections need equal lengths, got boxes={n}, scores={len(self.scores)}, "
                f"class_ids={len(self.class_ids)}"
            )

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))

    @classmethod
    def concat(cls, parts: list["Detections"]) -> "Detections":
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.class_ids for p in parts]),
        )

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, mask: np.ndarray) -> "Detections":
        return Detections(self.boxes[mask], self.scores[mask], self.class_ids[mask])

    def sorted(self) -> "Detections":
        """Highest score first (stable, so equal scores keep their order)."""
        return self.select(np.argsort(-self.scores, kind="stable"))


def normal_detection(score: float) -> Detections:
    """The class-14 ("No finding") call ``14 score 0 0 1 1``: the one place that builds it."""
    return Detections(np.array([NORMAL_BOX]), np.array([score]), np.array([NO_FINDING]))
