"""The validation score of the classifier, on the predictions of the WHOLE validation fold.

Multi-label: macro AUROC (scikit-learn ``roc_auc_score`` per class, averaged over the classes
that have both positive and negative images in the fold; a class without both is undefined and
left out, never counted as 0.5). Multi-class: accuracy of the arg-max class.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, roc_auc_score


def per_class_auroc(truth: np.ndarray, probs: np.ndarray) -> list[float]:
    """AUROC of each column (NaN where the column lacks positives or negatives)."""
    out = []
    for k in range(truth.shape[1]):
        y = truth[:, k]
        out.append(float(roc_auc_score(y, probs[:, k])) if 0 < y.sum() < len(y) else float("nan"))
    return out


def validation_score(task: str, truth: np.ndarray, probs: np.ndarray) -> dict:
    """``{"score", "per_class"}``: macro AUROC + per-class AUROC, or accuracy (+ per-class recall)."""
    if task == "multiclass":
        y, pred = truth.argmax(axis=1), probs.argmax(axis=1)
        recall = [float((pred[y == k] == k).mean()) if (y == k).any() else float("nan") for k in range(truth.shape[1])]
        return {"score": float(accuracy_score(y, pred)), "per_class": recall}
    aurocs = per_class_auroc(truth, probs)
    defined = [a for a in aurocs if np.isfinite(a)]
    return {"score": float(np.mean(defined)) if defined else 0.0, "per_class": aurocs}
