"""Box rescoring by the image-level classifier (``cxrdet infer --rescore classifier``).

Each finding box's score is multiplied by the classifier's probability of that box's class
(the 3rd-place VinBigData solution's rescaling). Exceptions, on purpose:

- a class the classifier does not predict (no ``clf_<class name>`` column) keeps its score;
- class-14 rows are not touched: they are the gate's call, made after rescoring.

With probability 1 for every class the detections come back unchanged; ranks within a class on
one image never change (one factor per image and class), so only the ranking across images moves.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cxrdet.classes import CLASS_NAMES, NUM_FINDINGS
from cxrdet.detections import Detections
from cxrdet.formats.image_level import classifier_column

RESCORE_CHOICES = ("none", "classifier")
FINDING_COLUMNS = [classifier_column(CLASS_NAMES[k]) for k in range(NUM_FINDINGS)]


def rescore(det: Detections, clf_row: Mapping[str, float]) -> Detections:
    """``det`` with each finding score times ``clf_row[clf_<class>]`` (where the column exists)."""
    factor = np.ones(NUM_FINDINGS + 1, dtype=np.float64)
    for k, col in enumerate(FINDING_COLUMNS):
        if col in clf_row and np.isfinite(clf_row[col]):
            factor[k] = float(clf_row[col])
    cls = det.class_ids.astype(np.int64)
    finding = (cls >= 0) & (cls < NUM_FINDINGS)
    scores = det.scores.astype(np.float64).copy()
    scores[finding] *= factor[cls[finding]]
    return Detections(det.boxes, scores, det.class_ids)
