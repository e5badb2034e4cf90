"""Box rescoring by the image-level classifier (``cxrdet infer --rescore classifier``), and its
out-of-fold measurement (``train-gate`` with both ``--detections`` and ``--classifier-probs``).

Each finding box's score is multiplied by the classifier's probability of that box's class
(the 3rd-place VinBigData solution's rescaling). Exceptions, on purpose:

- a class the classifier does not predict (no ``clf_<class name>`` column) keeps its score;
- class-14 rows are not touched: they are the gate's call, made after rescoring.

With probability 1 for every class the detections come back unchanged; ranks within a class on
one image never change (one factor per image and class), so only the ranking across images moves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from cxrdet.classes import CLASS_NAMES, NUM_FINDINGS
from cxrdet.detections import Detections
from cxrdet.formats.image_level import classifier_column

if TYPE_CHECKING:
    import pandas as pd

RESCORE_CHOICES = ("none", "classifier")
# ``auto``: rescore whenever a classifier is loaded. Not the default: on the demo's 48 OOF images
# rescoring scored higher (gated mAP@0.4 0.2915 -> 0.3026), but over 3 training seeds on 500 test
# images it cost 0.025 +- 0.011 (benchmarks/bench_quality.py, 2026-12-03), so the commands default to none.
AUTO = "auto"


def resolve_rescore(choice: str, has_classifier: bool) -> str:
    """``auto`` -> ``classifier`` with a classifier, else ``none``; other choices as given."""
    if choice == AUTO:
        return "classifier" if has_classifier else "none"
    return choice
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


def compare_rescoring(dets: Mapping[str, Detections], clf: "pd.DataFrame", p: Mapping[str, float],
                      labels, low: float, high: float) -> dict:
    """Out-of-fold mAP@0.4 with and without rescoring, ungated and gated at ``low``/``high``.

    ``dets``: OOF detections; ``clf``: OOF ``clf_*`` probabilities indexed by image_id; ``p``:
    the gate's OOF P(abnormal). Scored on the images that have all three. ``better`` is the
    rescore choice with the higher gated mAP (ties keep ``none``).
    """
    import warnings

    from cxrdet.detections import detections_to_frame
    from cxrdet.gate.rules import apply_gate
    from cxrdet.metrics import evaluate_detections

    ids = [i for i in dets if i in clf.index and i in p]
    rows = clf.to_dict("index")
    variants = {"none": {i: dets[i] for i in ids}, "classifier": {i: rescore(dets[i], rows[i]) for i in ids}}
    out: dict = {"n_images": len(ids), "low": low, "high": high}
    for name, preds in variants.items():
        for gated in (False, True):
            shown = {i: apply_gate(d, p[i], low, high) for i, d in preds.items()} if gated else preds
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = evaluate_detections(labels[labels["image_id"].isin(ids)], detections_to_frame(shown),
                                        pred_image_ids=ids)
            key = f"{'gated' if gated else 'ungated'}_{name}"
            out[key] = {"map": float(r.map), "map_no14": float(r.map_no14)}
    out["better"] = "classifier" if out["gated_classifier"]["map"] > out["gated_none"]["map"] else "none"
    return out
