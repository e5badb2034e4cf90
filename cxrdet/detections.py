"""One image's detections: the unit passed between detector, gate, submission and metric."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrdet.boxes import HW, as_boxes, clip_boxes, scale_boxes, valid_mask
from cxrdet.classes import NO_FINDING, NORMAL_BOX
from cxrdet.errors import UserError

BOX_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]
DET_COLUMNS = ["image_id", "class_id", "score", *BOX_COLUMNS]
MIN_BOX_PX = 1.0  # a submitted box must be at least one original pixel wide and high


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


def det_frame(image_ids, class_ids, scores, boxes) -> pd.DataFrame:
    """The detection frame (:data:`DET_COLUMNS`, one row per box) from per-box arrays."""
    frame = pd.DataFrame({"image_id": np.asarray(image_ids, dtype=object),
                          "class_id": np.asarray(class_ids, dtype=np.int64),
                          "score": np.asarray(scores, dtype=np.float64)})
    frame[BOX_COLUMNS] = as_boxes(boxes)
    return frame[DET_COLUMNS]


def detections_to_frame(predictions: Mapping[str, Detections]) -> pd.DataFrame:
    """``{image_id: Detections}`` -> a frame with :data:`DET_COLUMNS` (images in dict order)."""
    ids = list(predictions)
    counts = np.array([len(predictions[k]) for k in ids], dtype=np.int64)
    dets = Detections.concat([predictions[k] for k in ids])
    return det_frame(np.repeat(np.array(ids, dtype=object), counts), dets.class_ids, dets.scores, dets.boxes)


def detections_from_frame(det_df: pd.DataFrame, image_ids: Sequence[str] | None = None) -> dict[str, Detections]:
    """Group a :data:`DET_COLUMNS` frame by image; ``image_ids`` without rows get no boxes."""
    missing = [c for c in DET_COLUMNS if c not in det_df.columns]
    if missing:
        raise UserError(f"detections table lacks column(s) {missing}; expected {DET_COLUMNS}")
    out = {i: Detections.empty() for i in (image_ids or [])}
    for image_id, g in det_df.groupby("image_id", sort=False):
        out[str(image_id)] = Detections(
            g[BOX_COLUMNS].to_numpy(np.float64), g["score"].to_numpy(), g["class_id"].to_numpy()
        )
    return out


def to_original(det: Detections, cache_hw: HW, orig_hw: HW) -> Detections:
    """Map ``det`` from the cache image (``cache_hw``) to the original DICOM (``orig_hw``).

    The one cache -> original mapping, used by validation and by ``cxrdet infer`` alike, so
    ``val_map`` scores the boxes a submission would hold. The cache image of an original of size
    ``orig_hw`` has size ``resized_hw(orig_hw, size)`` (:mod:`cxrdet.boxes`), so mapping back is
    the anisotropic scale ``cache_hw -> orig_hw``; boxes are then clipped to the original image
    and boxes that became degenerate (thinner than ``MIN_BOX_PX`` original pixels) are dropped.
    """
    boxes = clip_boxes(scale_boxes(det.boxes, cache_hw, orig_hw), orig_hw)
    mapped = Detections(boxes, det.scores, det.class_ids)
    return mapped.select(valid_mask(boxes, min_size=MIN_BOX_PX))
