"""Scores of class probabilities against labels, with scikit-learn's metrics.

Multi-label: per-class AUROC (``roc_auc_score``) with a percentile bootstrap 95% interval over
images, macro AUROC (the mean over classes with positives and negatives) with its interval,
and calibration: reliability bins (``sklearn.calibration.calibration_curve``) and the expected
calibration error ECE = sum over bins of (share of images in the bin) x |observed rate - mean
predicted probability| (10 equal-width bins). Multi-class: accuracy, per-class precision /
recall / F1 / support (``precision_recall_fscore_support``) and the confusion matrix.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, precision_recall_fscore_support,
                             roc_auc_score)

N_BINS = 10  # reliability-diagram bins: the usual choice, enough images per bin on a fold


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def bootstrap_aurocs(truth: np.ndarray, probs: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, C]`` AUROCs of image resamples (NaN where a resample lacks a class's positives)."""
    rng = np.random.default_rng(seed)
    n, c = truth.shape
    out = np.full((n_boot, c), np.nan)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        for k in range(c):
            out[b, k] = _auroc(truth[idx, k], probs[idx, k])
    return out


def _interval(samples: np.ndarray) -> list[float | None]:
    ok = samples[np.isfinite(samples)]
    return [float(v) for v in np.percentile(ok, [2.5, 97.5])] if len(ok) else [None, None]


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = N_BINS) -> float:
    """ECE over ``n_bins`` equal-width probability bins (the last one closed at 1)."""
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            total += mask.mean() * abs(y[mask].mean() - p[mask].mean())
    return float(total)


def multilabel_report(names: list[str], truth: np.ndarray, probs: np.ndarray, n_boot: int = 1000,
                      seed: int = 0) -> dict:
    """Per-class AUROC [95% CI], prevalence and ECE; macro AUROC [95% CI]."""
    from sklearn.calibration import calibration_curve

    boot = bootstrap_aurocs(truth, probs, n_boot, seed) if n_boot > 0 else np.full((0, len(names)), np.nan)
    per_class = {}
    for k, name in enumerate(names):
        y, p = truth[:, k], probs[:, k]
        entry = {"positives": int(y.sum()), "images": int(len(y)), "auroc": _auroc(y, p),
                 "auroc_ci95": _interval(boot[:, k]), "ece": expected_calibration_error(y, p)}
        if 0 < y.sum() < len(y):
            observed, predicted = calibration_curve(y, p, n_bins=N_BINS, strategy="uniform")
            entry["reliability"] = {"predicted": predicted.tolist(), "observed": observed.tolist()}
        per_class[name] = entry
    defined = [k for k, n in enumerate(names) if np.isfinite(per_class[n]["auroc"])]
    macro = float(np.mean([per_class[names[k]]["auroc"] for k in defined])) if defined else float("nan")
    macro_boot = np.nanmean(boot[:, defined], axis=1) if defined and len(boot) else np.array([])
    return {"task": "multilabel", "images": int(len(truth)), "macro_auroc": macro,
            "macro_auroc_ci95": _interval(macro_boot), "classes_scored": [names[k] for k in defined],
            # pooled over the scored classes: classes no image has would add trivially calibrated zeros
            "ece_pooled": expected_calibration_error(truth[:, defined].ravel(), probs[:, defined].ravel())
            if defined else float("nan"), "per_class": per_class,
            "bootstrap": {"resamples": int(n_boot), "seed": int(seed)}}


def multiclass_report(names: list[str], y: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows = truth)."""
    pred = probs.argmax(axis=1)
    labels = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    matrix = confusion_matrix(y, pred, labels=labels)
    per_class = {n: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                     "support": int(support[k])} for k, n in enumerate(names)}
    return {"task": "multiclass", "images": int(len(y)), "accuracy": float(accuracy_score(y, pred)),
            "macro_f1": float(np.mean(f1)), "per_class": per_class, "confusion_matrix": matrix.tolist(),
            "ece_top_class": expected_calibration_error((pred == y).astype(float), probs.max(axis=1))}
