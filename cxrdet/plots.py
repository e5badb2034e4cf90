"""Pictures of a metric result: precision-recall curves and a per-class AP bar chart (PNG).

Uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global state), so it
works on headless servers and inside worker processes.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cxrdet.classes import CLASS_NAMES, NUM_CLASSES
from cxrdet.formats.atomic import atomic_path
from cxrdet.metrics import MetricResult

DPI = 100  # readable on screen, small files, fast to render


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI)
    return path


def envelope(precision: np.ndarray) -> np.ndarray:
    """The monotone precision envelope the VOC AP integrates."""
    return np.maximum.accumulate(np.asarray(precision)[::-1])[::-1] if len(precision) else precision


def _draw_pr(ax, result: MetricResult, c: int) -> None:
    p, r, ap = result.precision[c], result.recall[c], result.per_class[c]
    if len(p):
        ax.plot(r, p, color="0.7", lw=1, label="precision")
        ax.step(np.concatenate(([0.0], r)), np.concatenate((envelope(p)[:1], envelope(p))),
                where="pre", color="tab:blue", lw=1.5, label="envelope (AP area)")
        ax.fill_between(np.concatenate(([0.0], r)), np.concatenate((envelope(p)[:1], envelope(p))),
                        step="pre", alpha=0.15, color="tab:blue")
    title_ap = "no ground truth" if math.isnan(ap) else f"AP {ap:.3f}"
    ax.set_title(f"{c} {CLASS_NAMES[c]}\n{title_ap}, {result.n_gt[c]} gt, {result.n_det[c]} det", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.tick_params(labelsize=7)


def plot_pr_curves(result: MetricResult, out_dir: os.PathLike | str) -> list[Path]:
    """``pr_curves.png`` (all 15 classes in a grid) plus ``pr_<id>_<name>.png`` per class.

    The grid is drawn once; each class's file is its panel cut out of that drawing, which
    costs a crop instead of a second matplotlib render (~0.3 s a figure).
    """
    out_dir = Path(out_dir)
    fig = Figure(figsize=(13, 13))
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(4, 4)
    for c, ax in enumerate(axes.flat):
        if c < NUM_CLASSES:
            _draw_pr(ax, result, c)
            ax.set_xlabel("recall", fontsize=8)
            ax.set_ylabel("precision", fontsize=8)
        else:
            ax.axis("off")
    with_curve = [ax for ax in axes.flat[:NUM_CLASSES] if ax.get_legend_handles_labels()[0]]
    if with_curve:  # one legend for the grid, in the spare 16th panel
        axes.flat[NUM_CLASSES].legend(*with_curve[0].get_legend_handles_labels(), loc="center")
    fig.suptitle(f"Precision-recall at IoU > {result.iou_thr:g}: mAP {result.map:.4f}")
    # fixed margins: tight_layout costs ~0.4 s per figure
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.05, top=0.93, hspace=0.6, wspace=0.3)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())
    paths = [_save_pixels(pixels, out_dir / "pr_curves.png")]
    renderer = canvas.get_renderer()
    height = pixels.shape[0]
    for c in range(NUM_CLASSES):
        box = axes.flat[c].get_tightbbox(renderer)
        x0, x1 = max(0, int(box.x0) - 4), min(pixels.shape[1], int(np.ceil(box.x1)) + 4)
        y0, y1 = max(0, height - int(np.ceil(box.y1)) - 4), min(height, height - int(box.y0) + 4)
        paths.append(_save_pixels(pixels[y0:y1, x0:x1], out_dir / f"pr_{c:02d}_{_slug(CLASS_NAMES[c])}.png"))
    return paths


def _save_pixels(rgba: np.ndarray, path: Path) -> Path:
    from matplotlib.image import imsave

    with atomic_path(path) as tmp:
        imsave(tmp, np.ascontiguousarray(rgba))
    return path


def plot_ap_bars(result: MetricResult, path: os.PathLike | str) -> Path:
    """Horizontal bar per class (AP), the mAP as a line; classes without ground truth marked."""
    fig = Figure(figsize=(8, 6))
    ax = fig.subplots()
    aps = np.array([result.per_class[c] for c in range(NUM_CLASSES)])
    y = np.arange(NUM_CLASSES)[::-1]
    ax.barh(y, np.nan_to_num(aps), color=["tab:gray" if c == 14 else "tab:blue" for c in range(NUM_CLASSES)])
    for yi, ap in zip(y, aps):
        ax.text(0.005 if math.isnan(ap) else ap + 0.01, yi, "no gt" if math.isnan(ap) else f"{ap:.3f}",
                va="center", fontsize=8, bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1})
    if not math.isnan(result.map):
        ax.axvline(result.map, color="tab:red", ls="--", label=f"mAP {result.map:.4f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, [f"{c} {CLASS_NAMES[c]}" for c in range(NUM_CLASSES)], fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel(f"AP at IoU > {result.iou_thr:g}")
    ax.set_title(f"Per-class AP over {result.n_images} images")
    fig.subplots_adjust(left=0.3, right=0.97, bottom=0.09, top=0.94)
    return _save(fig, Path(path))
