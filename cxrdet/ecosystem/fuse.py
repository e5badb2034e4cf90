"""``cxrdet fuse``: fuse submissions written by any framework into one (ORIGINAL pixels).

Each ``--sub`` is a Kaggle submission CSV (``image_id,PredictionString``); ``--weight W`` right
after a ``--sub`` sets its weight (default 1). Boxes are normalised by each image's original
size (``--sizes-from``: an HDF5 cache, a META.csv, or a sizes CSV ``image_id,dim0,dim1``) and
fused per class with ensemble-boxes; class 14 follows the rule in
:mod:`cxrdet.ecosystem.submission_fusion` (weighted mean of the class-14 scores, absent = 0).
Every image is written exactly once. Submissions must list the same images unless
``--missing`` says what an image absent from a submission counts as there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from cxrdet.boxes import HW
from cxrdet.detections import Detections, detections_from_frame, normal_detection
from cxrdet.ecosystem.submission_fusion import CONF_TYPES, METHODS, SubmissionFusion, fuse_image
from cxrdet.errors import UserError

MISSING = ("error", "empty", "normal")
SHOWN = 10  # ids listed in an error message


class _Weight(argparse.Action):
    """``--weight W`` applies to the ``--sub`` just before it."""

    def __call__(self, parser, namespace, value, option_string=None):
        subs = getattr(namespace, "sub", None) or []
        weights = getattr(namespace, "weights", None) or {}
        if not subs:
            parser.error("--weight must follow the --sub it applies to")
        if len(subs) - 1 in weights:
            parser.error(f"--sub {subs[-1]} has two --weight values")
        weights[len(subs) - 1] = value
        namespace.weights = weights


def get_args_parser() -> argparse.ArgumentParser:
    d = SubmissionFusion()
    p = argparse.ArgumentParser(
        description="Fuse submissions (image_id,PredictionString, original pixels) from any framework with "
                    "ensemble-boxes; class 14 = weighted mean of the submissions' 'No finding' scores.")
    p.add_argument("--sub", action="append", required=True, metavar="SUB.csv", help="a submission; repeat")
    p.add_argument("--weight", type=float, action=_Weight, metavar="W", help="weight of the --sub before it (default 1)")
    p.add_argument("--method", choices=METHODS, default=d.method, help=f"box fusion (default: {d.method})")
    p.add_argument("--iou", type=float, default=d.iou_thr, help=f"clustering / suppression IoU (default: {d.iou_thr})")
    p.add_argument("--skip-box-thr", type=float, default=d.skip_box_thr,
                   help=f"drop boxes scoring below this, before and after fusion (default: {d.skip_box_thr})")
    p.add_argument("--conf-type", choices=CONF_TYPES, default=d.conf_type,
                   help=f"WBF cluster score (ensemble-boxes' conf_type; default: {d.conf_type})")
    p.add_argument("--sizes-from", required=True, metavar="PATH",
                   help="original image sizes: an HDF5 cache (.h5), a META.csv (image_id,rows,columns) "
                        "or a sizes CSV (image_id,dim0,dim1)")
    p.add_argument("--missing", choices=MISSING, default="error",
                   help="an image absent from some submissions: error = refuse (default); empty = it counts "
                        "as no predictions there; normal = it counts as '14 1 0 0 1 1' there")
    p.add_argument("--out", required=True, help="fused submission CSV (written atomically)")
    p.set_defaults(weights={})
    return p


def read_sizes(path: str) -> dict[str, HW]:
    """Original (rows, columns) per image from a cache, a META.csv or a sizes CSV."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--sizes-from {path} does not exist; pass a cache (.h5), a META.csv or a sizes CSV")
    if p.suffix.lower() in (".h5", ".hdf5"):
        from cxrdet.preprocess.cache import CacheReader

        with CacheReader(p) as reader:
            return {i: tuple(int(v) for v in reader.orig_hw(i)) for i in reader.ids}
    try:
        columns = set(pd.read_csv(p, nrows=0).columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"--sizes-from {path}: not a readable CSV ({e})") from None
    if {"rows", "columns"} <= columns:
        from cxrdet.formats.labels import image_sizes_from_meta

        return image_sizes_from_meta(p)
    if {"dim0", "dim1"} <= columns:
        from cxrdet.inference.sources import read_png_sizes

        return read_png_sizes(p)
    raise UserError(f"--sizes-from {path}:1: columns {sorted(columns)}; expected a META.csv (image_id,rows,"
                    "columns from `cxrdet prepare`) or a sizes CSV (image_id,dim0,dim1; dim0 = rows)")


def read_subs(paths: list[str]) -> list[tuple[dict[str, Detections], list[str]]]:
    from cxrdet.formats.submission import read_submission

    out = []
    for path in paths:
        frame, ids = read_submission(path, with_ids=True)
        out.append((detections_from_frame(frame, ids), ids))
    return out


def _shown(ids: list[str]) -> str:
    return ", ".join(ids[:SHOWN]) + (" ..." if len(ids) > SHOWN else "")


def image_order(paths: list[str], subs, missing: str) -> list[str]:
    """All ids, first submission's order first; refuses differing image sets under ``error``."""
    order = list(subs[0][1])
    seen = set(order)
    for _, ids in subs[1:]:
        order += [i for i in ids if i not in seen]
        seen.update(ids)
    if missing == "error":
        for path, (_, ids) in zip(paths, subs):
            have = set(ids)
            absent = [i for i in order if i not in have]
            if absent:
                raise UserError(
                    f"--sub {path} lacks {len(absent)} image(s) that other submissions have: {_shown(absent)}. "
                    "Predict them there, or pass --missing empty (absent = no predictions) or --missing "
                    "normal (absent = '14 1 0 0 1 1')")
    return order


def main(args: argparse.Namespace) -> int:
    from cxrdet.formats.submission import write_submission

    cfg = SubmissionFusion(method=args.method, iou_thr=args.iou, skip_box_thr=args.skip_box_thr,
                           conf_type=args.conf_type)
    try:
        cfg.check()
    except ValueError as e:
        raise UserError(f"--method/--iou/--skip-box-thr/--conf-type: {e}") from None
    weights = [float(args.weights.get(k, 1.0)) for k in range(len(args.sub))]
    if any(w <= 0 for w in weights):
        raise UserError(f"--weight values must be > 0, got {weights}")
    subs = read_subs(args.sub)
    order = image_order(args.sub, subs, args.missing)
    sizes = read_sizes(args.sizes_from)
    unsized = [i for i in order if i not in sizes]
    if unsized:
        raise UserError(f"--sizes-from {args.sizes_from} has no original size for {len(unsized)} image(s): "
                        f"{_shown(unsized)}; pass the cache, META.csv or sizes CSV of these images")
    fill = normal_detection(1.0) if args.missing == "normal" else Detections.empty()
    fused = {}
    for image_id in tqdm(order, unit="img", desc=f"fuse ({args.method})", file=sys.stderr, disable=None):
        runs = [preds.get(image_id, fill) for preds, _ in subs]
        fused[image_id] = fuse_image(runs, weights, sizes[image_id], cfg)
    write_submission(args.out, fused, order, {i: sizes[i] for i in order})
    print(f"fuse: {len(args.sub)} submissions, {len(order)} images, method {args.method} iou {args.iou} "
          f"-> {args.out}", file=sys.stderr)
    return 0
