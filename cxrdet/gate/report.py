"""What ``cxrdet train-gate`` shows: ``report.json`` and one picture (``feature_importance.png``).

The picture has three panels: the top features by total gain, the out-of-fold ROC curve of each
feature set of the ablation, and the OOF P(abnormal) of normal and abnormal images with the
gate thresholds drawn, so a reader sees at a glance how many abnormal images the low threshold
would silence.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on headless cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from cxrdet.formats import atomic  # noqa: E402

ZONES = ("normal_only", "hedged", "boxes_only")  # p < low, low <= p < high, p >= high


def zone_confusion(y: np.ndarray, p: np.ndarray, low: float, high: float) -> dict:
    """Truth (normal/abnormal) x gate zone counts at the given thresholds.

    ``normal_only`` is the zone where the gate drops every box (low/high thresholds: see cxrdet/gate/rules.py), so
    ``abnormal_silenced`` is the costly error; ``boxes_only`` on a normal image loses the
    class-14 call.
    """
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=np.float64)
    zone = np.where(p < low, 0, np.where(p < high, 1, 2))
    table = {
        truth: {name: int(((y == label) & (zone == z)).sum()) for z, name in enumerate(ZONES)}
        for label, truth in ((0, "normal"), (1, "abnormal"))
    }
    return {
        "low": float(low),
        "high": float(high),
        "counts": table,
        "abnormal_silenced": table["abnormal"]["normal_only"],
        "normal_without_no_finding": table["normal"]["boxes_only"],
    }


def write_report_json(path: str | Path, report: dict) -> Path:
    """``report.json`` (numpy values as Python ones, NaN/inf as null), written atomically."""
    return atomic.write_json(path, report)


def plot_report(
    path: str | Path,
    importance: pd.Series,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    y: np.ndarray,
    p: np.ndarray,
    low: float,
    high: float,
    top: int = 20,
) -> Path:
    """Write the three-panel report picture; ``curves`` maps feature set -> (y, OOF p)."""
    fig, axes = plt.subplots(1, 3, figsize=(18, 6), gridspec_kw={"width_ratios": [1.2, 1, 1]})
    used = importance[importance > 0]  # unused features would only crowd the chart
    _importance_panel(axes[0], (used if len(used) else importance).head(top))
    _roc_panel(axes[1], curves)
    _score_panel(axes[2], np.asarray(y).astype(int), np.asarray(p), low, high)
    fig.tight_layout()
    path = Path(path)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def _importance_panel(ax, imp: pd.Series) -> None:
    names = list(imp.index)[::-1]
    ax.barh(names, imp.to_numpy()[::-1], color="tab:blue")
    ax.set_xlabel("share of total gain")
    ax.set_title(f"gate: top {len(names)} features")
    ax.tick_params(axis="y", labelsize=8)


def _roc_panel(ax, curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    from sklearn.metrics import roc_auc_score

    for name, (y, p) in curves.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate (normal called abnormal)")
    ax.set_ylabel("true positive rate")
    ax.set_title("out-of-fold ROC per feature set")
    ax.legend(loc="lower right", fontsize=8)


def _score_panel(ax, y: np.ndarray, p: np.ndarray, low: float, high: float) -> None:
    bins = np.linspace(0, 1, 41)
    ax.hist(p[y == 0], bins=bins, alpha=0.6, label=f"normal ({int((y == 0).sum())})", color="tab:green")
    ax.hist(p[y == 1], bins=bins, alpha=0.6, label=f"abnormal ({int((y == 1).sum())})", color="tab:red")
    for t, name, align in ((low, "low", "left"), (high, "high", "right")):
        ax.axvline(t, color="black", linestyle="--", linewidth=1)
        ax.text(t, ax.get_ylim()[1] * 0.95, f" {name}={t:.2f} ", fontsize=8, ha=align)
    ax.set_xlabel("out-of-fold P(abnormal)")
    ax.set_ylabel("images")
    ax.set_title("gate zones: normal only | boxes + 14 | boxes only")
    ax.legend(loc="center", fontsize=8)
