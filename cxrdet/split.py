"""``cxrdet split``: multilabel-stratified K-fold split of a label CSV, by image.

Stratifies over the 15 image-level labels (:func:`cxrdet.formats.labels.image_level_labels`) with
iterative-stratification, so rare findings (Pneumothorax, Atelectasis) land in every fold that
their count allows. Writes ``image_id,fold`` (fold in 0..K-1) and prints per-fold class counts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdet.classes import CLASS_NAMES
from cxrdet.errors import UserError
from cxrdet.flags import DEFAULT_SEED, RenamedFlag
from cxrdet.formats.labels import image_level_labels, read_labels
from cxrdet.formats.folds import write_folds


def make_folds(labels: pd.DataFrame, k: int, seed: int = 0) -> pd.DataFrame:
    """``DataFrame(image_id, fold)`` in the labels' image order; each image in exactly one fold."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    y = image_level_labels(labels)
    if k < 2:
        raise UserError(f"a K-fold split needs at least 2 folds, got {k}")
    if k > len(y):
        raise UserError(f"{k} folds is more than the {len(y)} labelled images; use at most {len(y)} folds")
    fold = np.full(len(y), -1, dtype=np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for i, (_, test_idx) in enumerate(splitter.split(np.zeros((len(y), 1)), y.to_numpy())):
        fold[test_idx] = i
    return pd.DataFrame({"image_id": y.index.to_numpy(dtype=object), "fold": fold})


def fold_class_counts(labels: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Images per class (rows, class names) and fold (columns), plus an ``images`` row."""
    y = image_level_labels(labels)
    f = folds.set_index("image_id")["fold"].reindex(y.index)
    counts = y.groupby(f.to_numpy()).sum().T
    counts.index = [CLASS_NAMES[c] for c in counts.index]
    counts.loc["images"] = f.value_counts().sort_index().to_numpy()
    counts.columns = [f"fold {c}" for c in counts.columns]
    return counts


def _old_folds_hint(value: str) -> str:
    if value.strip().isdigit():
        return f"the fold count is now --n-folds {value} (--folds is always a FOLDS.csv path)"
    return ("split takes no FOLDS.csv: it writes one to --out (--folds is always a FOLDS.csv path; "
            "the fold count is --n-folds K)")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Multilabel-stratified K-fold split of a label CSV, by image "
                                "(iterative-stratification over the 15 image-level labels).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--labels", required=True, help="label CSV (VinBigData train.csv format)")
    p.add_argument("--n-folds", type=int, default=5, metavar="K", help="number of folds K")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="shuffle seed; same seed, same split")
    p.add_argument("--out", required=True, help="output FOLDS.csv with columns image_id,fold")
    p.add_argument("--folds", action=RenamedFlag, hint=_old_folds_hint)
    return p


def main(args: argparse.Namespace) -> int:
    if args.n_folds < 2:
        raise UserError(f"--n-folds must be at least 2 for a K-fold split, got {args.n_folds}")
    labels = read_labels(args.labels)
    folds = make_folds(labels, args.n_folds, args.seed)
    out = Path(args.out)
    write_folds(out, dict(zip(folds["image_id"], folds["fold"])))
    print(f"{len(folds)} images in {args.n_folds} folds (seed {args.seed}); images per class and fold:")
    print(fold_class_counts(labels, folds).to_string())
    print(f"wrote {out}")
    return 0
