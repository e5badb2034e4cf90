"""Whether tuned gate thresholds may replace the defaults: a held-out test of the tuned pair's gain.

The best ``(low, high)`` of a grid is optimistic on the images it was picked on: on 48
out-of-fold (OOF) images a tuned 0.2 / 0.7 lowered the test mAP of every detector tried, while
the defaults 0.08 / 0.95 raised it. So the tuned pair has to earn its place:

1. at least :data:`MIN_IMAGES` OOF images, :data:`MIN_ABNORMAL` of them with a finding, else
   the defaults are kept without tuning;
2. the OOF images are split in two halves, stratified by normal/abnormal (seeded): the grid
   search picks the pair on the *selection* half only;
3. on the *test* half, a paired bootstrap over images (:data:`N_BOOTSTRAP` resamples, the same
   images for both pairs) gives the mAP@0.4 difference ``tuned - defaults`` and its 95 %
   percentile interval; the tuned pair is adopted only when the interval's lower end is above
   zero. The adopted pair is the one picked on the selection half (the one that was tested),
   not a re-tuning on all images.

Halving the images costs power, but the gain is then measured on images the choice never saw,
which is the only figure that predicts the test set; see docs/gate.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from cxrdet.classes import NO_FINDING
from cxrdet.detections import Detections
from cxrdet.gate.rules import DEFAULT_HIGH, DEFAULT_HIGHS, DEFAULT_LOW, DEFAULT_LOWS, GatedScorer, tune_thresholds

# 100 images per half: below that the bootstrap interval of a mAP difference (a few hundredths
# wide at best) is wider than any gain a threshold change gives, so tuning could only add noise.
MIN_IMAGES = 200
# 25 abnormal images per half: the 14 finding classes' APs rest on them; with fewer, most classes
# hold one or two boxes and one lucky drop moves a class's AP by 0.5.
MIN_ABNORMAL = 50
N_BOOTSTRAP = 1000  # percentile interval ends move by < 0.005 between seeds at this count
CONFIDENCE = 0.95  # two-sided; adopt only when the lower end is above zero
SELECT_SHARE = 0.5  # half picks the pair, half tests it


def select_thresholds(detections: Mapping[str, Detections], p_abnormal: Mapping[str, float],
                      gt_labels: pd.DataFrame, seed: int = 0, lows: Sequence[float] = DEFAULT_LOWS,
                      highs: Sequence[float] = DEFAULT_HIGHS, min_images: int = MIN_IMAGES,
                      min_abnormal: int = MIN_ABNORMAL, n_bootstrap: int = N_BOOTSTRAP) -> dict:
    """The thresholds to save and why (module docstring), as a JSON-ready dict.

    Keys: ``low``, ``high``, ``decision`` ("tuned" or "defaults"), ``reason``, ``defaults``,
    ``n_images``, ``n_abnormal``, ``min_images``, ``min_abnormal``; after tuning also
    ``tuned`` (the pair picked on the selection half), ``n_select``, ``n_test``,
    ``n_test_abnormal``, ``seed`` and ``gain`` (point difference, interval, both mAPs).
    """
    ids = pd.unique(gt_labels["image_id"])
    abnormal = set(gt_labels.loc[gt_labels["class_id"] != NO_FINDING, "image_id"])
    y = np.array([i in abnormal for i in ids])
    out = {"low": DEFAULT_LOW, "high": DEFAULT_HIGH, "decision": "defaults",
           "defaults": {"low": DEFAULT_LOW, "high": DEFAULT_HIGH}, "n_images": int(len(ids)),
           "n_abnormal": int(y.sum()), "min_images": int(min_images), "min_abnormal": int(min_abnormal)}
    if len(ids) < min_images or y.sum() < min_abnormal or (~y).sum() < 2:
        out["reason"] = (f"too few out-of-fold images to tune: {len(ids)} images ({int(y.sum())} abnormal), "
                         f"at least {min_images} ({min_abnormal} abnormal) needed")
        return out
    pick, test = train_test_split(ids, test_size=1 - SELECT_SHARE, stratify=y, random_state=seed)
    low, high, _ = tune_thresholds(detections, p_abnormal, _rows_of(gt_labels, pick), lows, highs)
    test_labels = _rows_of(gt_labels, test)
    gain = paired_bootstrap(GatedScorer(detections, p_abnormal, test_labels), (low, high),
                            (DEFAULT_LOW, DEFAULT_HIGH), n_bootstrap, seed)
    out.update(tuned={"low": low, "high": high}, n_select=int(len(pick)), n_test=int(len(test)),
               n_test_abnormal=int(sum(i in abnormal for i in test)), seed=int(seed), gain=gain)
    lo, hi = gain["ci95"]
    if (low, high) == (DEFAULT_LOW, DEFAULT_HIGH):
        out["reason"] = "the grid search on the selection half picked the defaults themselves"
    elif lo > 0:
        out.update(low=low, high=high, decision="tuned",
                   reason=f"the tuned pair beats the defaults on the held-out half: mAP@0.4 gain "
                          f"{gain['map']:+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}] excludes 0")
    else:
        out["reason"] = (f"the tuned pair's gain on the held-out half is within its uncertainty: mAP@0.4 "
                         f"gain {gain['map']:+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}] includes 0")
    return out


def paired_bootstrap(scorer: GatedScorer, pair: tuple[float, float], baseline: tuple[float, float],
                     n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """mAP@0.4 of ``pair`` minus ``baseline`` on the scorer's images, with a paired bootstrap interval.

    Each resample draws the images with replacement once and scores both pairs on it, so the
    images' shared difficulty cancels and only the pairs' difference varies.
    """
    out = bootstrap_difference(lambda w: scorer.score(*pair, weights=w), lambda w: scorer.score(*baseline, weights=w),
                               len(scorer.image_ids), n_bootstrap, seed)
    out["map_tuned"], out["map_defaults"] = out.pop("map_a"), out.pop("map_b")
    return out


def bootstrap_difference(score_a, score_b, n_images: int, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """``score_a - score_b`` (mAP@0.4) with a paired bootstrap interval over the same ``n_images``.

    ``score_x(weights)`` returns ``{"map", "map_no14", ...}`` for image copy counts ``weights``
    (``None``: each image once), as :meth:`GatedScorer.score` does. Keys: ``map`` (point
    difference), ``ci95``, ``se``, ``map_a``, ``map_b``, ``map_no14`` (difference), ``n_bootstrap``.
    """
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        w = np.bincount(rng.integers(0, n_images, n_images), minlength=n_images)
        diffs[b] = score_a(w)["map"] - score_b(w)["map"]
    a, b_ = score_a(None), score_b(None)
    alpha = (1 - CONFIDENCE) / 2
    lo, hi = np.nanquantile(diffs, [alpha, 1 - alpha])
    return {"map": a["map"] - b_["map"], "ci95": [float(lo), float(hi)], "se": float(np.nanstd(diffs)),
            "map_a": a["map"], "map_b": b_["map"], "map_no14": a["map_no14"] - b_["map_no14"],
            "n_bootstrap": int(n_bootstrap)}


def _rows_of(labels: pd.DataFrame, ids) -> pd.DataFrame:
    return labels[labels["image_id"].isin(set(ids))]
