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
# ``auto`` (the commands' default): the choice ``train-gate`` recorded in the gate from its
# out-of-fold measurement (:func:`compare_rescoring`), when a classifier is loaded; else none.
AUTO = "auto"


def resolve_rescore(choice: str, has_classifier: bool, gate_choice: str = "none") -> str:
    """``auto`` -> ``gate_choice`` (the gate's recorded decision) with a classifier, else ``none``;
    other choices as given."""
    if choice == AUTO:
        return gate_choice if has_classifier and gate_choice in RESCORE_CHOICES else "none"
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
                      labels, low: float, high: float, seed: int = 0, n_bootstrap: int | None = None) -> dict:
    """Out-of-fold mAP@0.4 with and without rescoring, ungated and gated at ``low``/``high``, and
    the choice the gate records for ``--rescore auto``.

    ``dets``: OOF detections; ``clf``: OOF ``clf_*`` probabilities indexed by image_id; ``p``:
    the gate's OOF P(abnormal). Scored on the images that have all three. ``better`` is the
    variant with the higher gated mAP (ties keep ``none``); ``choice`` is ``classifier`` only
    when that gain holds beyond its uncertainty, as for the gate's thresholds
    (:mod:`cxrdet.gate.selection`): at least ``MIN_IMAGES`` images (``MIN_ABNORMAL`` abnormal)
    and a paired bootstrap 95 % interval of the gated gain above zero. Otherwise ``none``: a
    two-way choice read off a few dozen images picks noise as often as signal.
    """
    import warnings

    from cxrdet.detections import detections_to_frame
    from cxrdet.gate.rules import apply_gate
    from cxrdet.metrics import evaluate_detections

    ids = [i for i in dets if i in clf.index and i in p]
    rows = clf.to_dict("index")
    gt = labels[labels["image_id"].isin(ids)]
    variants = {"none": {i: dets[i] for i in ids}, "classifier": {i: rescore(dets[i], rows[i]) for i in ids}}
    out: dict = {"n_images": len(ids), "low": low, "high": high}
    for name, preds in variants.items():
        for gated in (False, True):
            shown = {i: apply_gate(d, p[i], low, high) for i, d in preds.items()} if gated else preds
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = evaluate_detections(gt, detections_to_frame(shown), pred_image_ids=ids)
            key = f"{'gated' if gated else 'ungated'}_{name}"
            out[key] = {"map": float(r.map), "map_no14": float(r.map_no14)}
    out["better"] = "classifier" if out["gated_classifier"]["map"] > out["gated_none"]["map"] else "none"
    out.update(rescoring_choice(variants, p, gt, low, high, seed, n_bootstrap))
    return out


def rescoring_choice(variants: Mapping[str, Mapping[str, Detections]], p: Mapping[str, float], gt: "pd.DataFrame",
                     low: float, high: float, seed: int = 0, n_bootstrap: int | None = None) -> dict:
    """``choice`` (``classifier`` or ``none``) and its ``reason`` for the OOF detections
    ``variants["none"]`` and ``variants["classifier"]`` (rescored), gated at ``low``/``high``;
    with ``gain`` (:func:`cxrdet.gate.selection.bootstrap_difference`) when there were enough images."""
    import warnings

    from cxrdet.classes import NO_FINDING
    from cxrdet.gate.rules import GatedScorer
    from cxrdet.gate.selection import MIN_ABNORMAL, MIN_IMAGES, N_BOOTSTRAP, bootstrap_difference

    n_images = int(gt["image_id"].nunique())
    n_abnormal = int(gt.loc[gt["class_id"] != NO_FINDING, "image_id"].nunique())
    out = {"n_abnormal": n_abnormal, "min_images": MIN_IMAGES, "min_abnormal": MIN_ABNORMAL, "choice": "none"}
    if n_images < MIN_IMAGES or n_abnormal < MIN_ABNORMAL:
        out["reason"] = (f"too few out-of-fold images to decide: {n_images} ({n_abnormal} abnormal), at least "
                         f"{MIN_IMAGES} ({MIN_ABNORMAL} abnormal) needed; rescoring stays off")
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with_clf, without = (GatedScorer(variants[k], p, gt) for k in ("classifier", "none"))
    gain = bootstrap_difference(lambda w: with_clf.score(low, high, weights=w),
                                lambda w: without.score(low, high, weights=w), len(with_clf.image_ids),
                                n_bootstrap or N_BOOTSTRAP, seed)
    lo, hi = gain["ci95"]
    out["gain"] = gain
    out["reason"] = (f"gated mAP@0.4 gain of rescoring {gain['map']:+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}] "
                     f"{'excludes 0; rescoring is adopted' if lo > 0 else 'includes 0; rescoring stays off'}")
    if lo > 0:
        out["choice"] = "classifier"
    return out
