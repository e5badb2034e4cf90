"""``cxrdet export-labels``: the detector's training boxes and fold split for other frameworks.

The boxes are exactly the targets ``cxrdet train`` fits (:func:`cxrdet.detector.table.load_table`:
the same reader fusion, ``--fusion``/``--fusion-iou`` with train's defaults, scaled to cache
pixels), split into train (folds != K) and val (fold K). Output folder::

    images/{train,val}/<image_id>.png            cache images (the size the detector trains at)
    annotations/instances_{train,val}.json       --format coco (pycocotools, MMDetection, detectron2)
    labels/{train,val}/<image_id>.txt + data.yaml  --format yolo (ultralytics)

Images with no finding are kept: a COCO image entry without annotations, an empty YOLO ``.txt``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cxrdet.classes import label_to_class
from cxrdet.detector.config import FUSIONS, DetectorConfig
from cxrdet.ecosystem.label_formats import coco_dataset, yolo_data_yaml, yolo_lines
from cxrdet.errors import UserError, safe_child
from cxrdet.formats.atomic import write_bytes, write_json, write_text

FORMATS = ("coco", "yolo")
SPLITS = ("train", "val")


def get_args_parser() -> argparse.ArgumentParser:
    defaults = DetectorConfig()
    p = argparse.ArgumentParser(
        description="Export the detector's fused training boxes and the fold-K train/val split as COCO JSON "
                    "or the YOLO layout, with the cache images as PNG (boxes in cache pixels).")
    p.add_argument("--labels", required=True, help="label CSV (VinBigData train.csv format, original pixels)")
    p.add_argument("--folds", required=True, help="FOLDS.csv (image_id,fold) from `cxrdet split`")
    p.add_argument("--fold", type=int, required=True, help="validation fold K; the other folds are train")
    p.add_argument("--cache", required=True, help="HDF5 cache from `cxrdet prepare` (sets the image size)")
    p.add_argument("--format", required=True, choices=FORMATS, help="coco: annotations/instances_*.json; "
                   "yolo: labels/*/*.txt + data.yaml")
    p.add_argument("--fusion", choices=FUSIONS, default=defaults.fusion,
                   help=f"reader fusion of the boxes, as `cxrdet train --fusion` (default: {defaults.fusion})")
    p.add_argument("--fusion-iou", type=float, default=defaults.fusion_iou,
                   help=f"IoU threshold of the fusion, as `cxrdet train` (default: {defaults.fusion_iou})")
    p.add_argument("--out", required=True, help="output folder (must be empty or new)")
    return p


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder; pass a new folder, so files of an "
                        "earlier export (another fold or format) cannot mix with this one")


def split_ids(table) -> dict[str, list[str]]:
    return {"train": list(table.train_ids), "val": list(table.val_ids)}


def write_images(cache_path: str, splits: dict[str, list[str]], out: Path) -> dict[str, tuple[int, int]]:
    """Every image of every split as ``images/<split>/<id>.png``; returns the cache sizes."""
    from cxrdet.preprocess.cache import CacheReader

    folders = {s: out / "images" / s for s in splits}
    for s, ids in splits.items():
        for image_id in ids:  # refuse unsafe ids before writing anything
            safe_child(folders[s], image_id, ".png")
    hw: dict[str, tuple[int, int]] = {}
    total = sum(map(len, splits.values()))
    with CacheReader(cache_path) as reader, tqdm(total=total, unit="img", desc="export images",
                                                  file=sys.stderr) as bar:
        for s, ids in splits.items():
            for image_id in ids:
                image, _ = reader.read(image_id)
                ok, png = cv2.imencode(".png", np.ascontiguousarray(image))
                if not ok:
                    raise RuntimeError(f"OpenCV could not encode image {image_id!r} as PNG")
                write_bytes(safe_child(folders[s], image_id, ".png"), png.tobytes())
                hw[image_id] = (int(image.shape[0]), int(image.shape[1]))
                bar.update(1)
    return hw


def class_targets(table) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The table's targets with cxrdet class ids (0..13) instead of torchvision labels."""
    return {i: (boxes, np.asarray(label_to_class(labels), np.int64)) for i, (boxes, labels) in table.targets.items()}


def write_coco(out: Path, splits, targets, hw, info: dict) -> list[Path]:
    paths = []
    for s, ids in splits.items():
        path = out / "annotations" / f"instances_{s}.json"
        write_json(path, coco_dataset(ids, targets, hw, {**info, "split": s}), indent=None)
        paths.append(path)
    return paths


def write_yolo(out: Path, splits, targets, hw) -> list[Path]:
    import yaml

    for s, ids in splits.items():
        for image_id in ids:
            boxes, cls = targets[image_id]
            write_text(safe_child(out / "labels" / s, image_id, ".txt"), yolo_lines(boxes, cls, hw[image_id]))
    data = yolo_data_yaml(str(out.resolve()), {s: f"images/{s}" for s in splits})
    path = out / "data.yaml"
    write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return [path]


def main(args: argparse.Namespace) -> int:
    from cxrdet.detector.table import load_table

    out = Path(args.out)
    check_out(out)
    cfg = DetectorConfig(cache=args.cache, labels=args.labels, folds=args.folds, fold=args.fold,
                         fusion=args.fusion, fusion_iou=args.fusion_iou)
    cfg.check("command line")
    if not 0 < args.fusion_iou < 1:
        raise UserError(f"--fusion-iou must be in (0, 1), got {args.fusion_iou}")
    table = load_table(cfg)
    splits = split_ids(table)
    hw = write_images(args.cache, splits, out)
    targets = class_targets(table)
    info = {"description": "cxrdet export-labels", "fold": args.fold, "fusion": args.fusion,
            "fusion_iou": args.fusion_iou, "cache_size": table.cache_size, "cache_voi": table.cache_voi,
            "boxes": "cache pixels"}
    written = write_coco(out, splits, targets, hw, info) if args.format == "coco" else write_yolo(out, splits, targets, hw)
    n_boxes = sum(len(targets[i][1]) for ids in splits.values() for i in ids)
    print(f"export-labels: {len(splits['train'])} train + {len(splits['val'])} val images, {n_boxes} boxes "
          f"(fusion {args.fusion}) -> {out} ({', '.join(str(p) for p in written)})", file=sys.stderr)
    return 0
