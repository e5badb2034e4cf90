"""Pictures of a classifier evaluation: ROC curves, reliability diagram, confusion matrix (PNG)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cxrdet.formats import atomic

DPI = 100


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI)
    return Path(path)


def plot_roc_curves(names: list[str], truth: np.ndarray, probs: np.ndarray, report: dict, path) -> Path:
    from sklearn.metrics import roc_curve

    fig = _figure(7, 6)
    ax = fig.add_subplot(1, 1, 1)
    for k, name in enumerate(names):
        if name not in report["classes_scored"]:
            continue
        fpr, tpr, _ = roc_curve(truth[:, k], probs[:, k])
        ax.plot(fpr, tpr, lw=1.2, label=f"{name} {report['per_class'][name]['auroc']:.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
           title=f"ROC curves (macro AUROC {report['macro_auroc']:.3f})")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_reliability(report: dict, path) -> Path:
    fig = _figure(6, 6)
    ax = fig.add_subplot(1, 1, 1)
    for name, entry in report["per_class"].items():
        curve = entry.get("reliability")
        if curve:
            ax.plot(curve["predicted"], curve["observed"], "o-", ms=3, lw=1, label=f"{name} ECE {entry['ece']:.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ax.set(xlabel="mean predicted probability", ylabel="observed positive rate", xlim=(0, 1), ylim=(0, 1),
           title=f"reliability diagram (pooled ECE {report['ece_pooled']:.3f})")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def plot_confusion(names: list[str], matrix: np.ndarray, path) -> Path:
    from sklearn.metrics import ConfusionMatrixDisplay

    fig = _figure(1.2 + 0.9 * len(names), 1.0 + 0.9 * len(names))
    ax = fig.add_subplot(1, 1, 1)
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=names).plot(ax=ax, colorbar=False, xticks_rotation=45)
    ax.set_title("confusion matrix (rows: truth)")
    return _save(fig, path)


def plot_pointing_game(pointing: dict, path) -> Path:
    """Pointing-game hit rate per class next to its chance level (bars), pairs in the labels."""
    names = list(pointing["per_class"])
    fig = _figure(8, 0.8 + 0.4 * max(1, len(names)))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(names))
    hits = [pointing["per_class"][n]["hit_rate"] for n in names]
    chance = [pointing["per_class"][n]["chance"] for n in names]
    ax.barh(y + 0.2, hits, height=0.4, label="Grad-CAM peak inside a box", color="tab:red")
    ax.barh(y - 0.2, chance, height=0.4, label="chance (area share of the boxes)", color="tab:grey")
    ax.set_yticks(y, [f"{n} (n={pointing['per_class'][n]['pairs']})" for n in names])
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    o = pointing["overall"]
    if o["pairs"]:
        ax.set_title(f"pointing game: {o['hit_rate']:.3f} vs chance {o['chance']:.3f} over {o['pairs']} image-class pairs")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)
