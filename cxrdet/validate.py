"""``cxrdet val``: score a trained detector on its validation fold, without training.

The torchvision references' ``--test-only``. The fold's images are read from the cache, run
through the exported detector in the order and batches validation used (``val_batch_size`` of
the run unless ``--batch-size`` says otherwise: torchvision pads a batch to its largest image,
so batching can move scores slightly), mapped to original pixels by
:func:`cxrdet.detections.to_original` and scored by
:func:`cxrdet.detector.module.score_predictions` against the readers' boxes fused as in training.
So the mAP@0.4 is the ``val_map`` the run logged for these weights (whole fold, i.e. a run
trained with ``--limit-val-batches 1``). The per-class table is ``cxrdet evaluate``'s.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from tqdm import tqdm

from cxrdet.errors import UserError
from cxrdet.flags import add_device_flag

INTERRUPT_NOTE = "nothing is written before the end (the JSON report); a rerun starts over"


def get_args_parser() -> argparse.ArgumentParser:
    from cxrdet.inference.tta import TTA_CHOICES

    p = argparse.ArgumentParser(
        description="Score an exported detector on its validation fold (mAP@0.4, the per-class table "
                    "of `cxrdet evaluate`), without training: the val_map the run logged for it.")
    p.add_argument("--model", required=True, metavar="ARTIFACT_DIR",
                   help="exported detector (RUN/export: model.pt + config.json)")
    p.add_argument("--cache", required=True, help="HDF5 cache from `cxrdet prepare` the run trained on")
    p.add_argument("--labels", required=True, help="label CSV (VinBigData train.csv format)")
    p.add_argument("--folds", required=True, help="FOLDS.csv (image_id,fold) from `cxrdet split`")
    p.add_argument("--fold", type=int, required=True, help="the validation fold to score (the run's --fold)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default: the run's val_batch_size)")
    add_device_flag(p, "the detector runs")
    p.add_argument("--tta", choices=TTA_CHOICES, default="none",
                   help="test-time augmentation, fused with WBF as `cxrdet infer --tta` (default: none)")
    p.add_argument("--json", help="write the report (mAP, per-class AP and counts) as JSON here")
    return p


def load_fold(cfg, args: argparse.Namespace):
    """The run's config pointed at these files, and the validation table it defines."""
    from cxrdet.detector.data import load_table

    cfg = replace(cfg, cache=str(args.cache), labels=str(args.labels), folds=str(args.folds), fold=args.fold)
    table = load_table(cfg)
    if (table.cache_size, table.cache_voi) != (int(cfg.cache_size or 0), str(cfg.cache_voi or "")):
        raise UserError(f"cache {args.cache} holds size {table.cache_size} voi {table.cache_voi}, but detector "
                        f"{args.model} was trained on size {cfg.cache_size} voi {cfg.cache_voi}; pass the "
                        "cache the run trained on")
    return cfg, table


def predict_fold(model, cache_path: str, table, batch_size: int, tta: str) -> dict:
    """Detections in ORIGINAL pixels per validation image, as validation computes them."""
    from cxrdet.detections import to_original
    from cxrdet.detector.predict import predict
    from cxrdet.inference.tta import predict_fused
    from cxrdet.preprocess.cache import CacheReader

    reader = CacheReader(cache_path)
    per_image = {}
    ids = table.val_ids
    with tqdm(total=len(ids), unit="img", desc="val", file=sys.stderr) as bar:
        for start in range(0, len(ids), batch_size):
            batch = ids[start:start + batch_size]
            images = [reader.read(i)[0] for i in batch]
            dets = predict_fused([lambda ims: predict(model, ims)], images, tta)
            for image_id, image, det in zip(batch, images, dets):
                per_image[image_id] = to_original(det, image.shape[:2], table.orig_hw[image_id])
            bar.update(len(batch))
    return per_image


def main(args: argparse.Namespace) -> int:
    import torch

    from cxrdet.detector.export import load_detector
    from cxrdet.detector.module import score_predictions
    from cxrdet.device import torch_device
    from cxrdet.evaluate import format_table
    from cxrdet.formats.atomic import write_json

    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = torch_device(args.device, torch.cuda.device_count())
    model, cfg = load_detector(args.model, map_location=device)
    cfg, table = load_fold(cfg, args)
    batch_size = args.batch_size or cfg.val_batch_size
    print(f"val: fold {args.fold} of {args.folds}: {len(table.val_ids)} images, tta={args.tta}, "
          f"batch {batch_size}, device {device}", file=sys.stderr)
    per_image = predict_fold(model, args.cache, table, batch_size, args.tta)
    result = score_predictions(table.val_gt, per_image)
    for m in result.warnings:
        print(f"warning: {m}", file=sys.stderr)
    print(format_table(result))
    if args.json:
        report = result.to_json()
        report.update({"model": str(args.model), "folds": str(args.folds), "fold": args.fold, "tta": args.tta,
                       "fusion": cfg.fusion})
        write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0
