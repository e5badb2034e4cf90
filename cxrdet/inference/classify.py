"""``cxrdet classify``: image-level class probabilities from trained classifier(s) -> probs.csv.

inputs (HDF5 cache | DICOM folder | PNG/JPEG folder, prepared exactly as ``cxrdet prepare``)
-> DataLoader (workers) -> each ``--model`` (resized to its own input size, optional hflip TTA)
-> mean probabilities -> ``--out`` (:mod:`cxrdet.formats.probabilities`), plus the errors CSV
``<out stem>.errors.csv`` (exit 3 when an image failed) and the provenance record
``<out stem>.provenance.json`` (which classifier, trained on which folds, predicted which
images: :mod:`cxrdet.formats.provenance`), so stacking can check the evidence is out-of-fold.

Heatmaps: ``--cam-dir DIR`` adds Grad-CAM overlay PNGs of the ``--cam-classes`` per image and,
with ``--cam-raw``, the raw heatmaps in ``DIR/heatmaps.h5`` (:mod:`cxrdet.inference.cam_output`).

Sharding: ``--shard i/n`` predicts every n-th sorted id from i; ``cxrdet merge-probabilities``
combines the shards (rows, errors CSVs and provenance records).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cxrdet.device import torch_device
from cxrdet.errors import UserError, failure_reason
from cxrdet.formats.failures import FailureLog, errors_path
from cxrdet.formats.probabilities import write_probabilities
from cxrdet.formats.provenance import model_record, write_provenance
from cxrdet.flags import add_device_flag
from cxrdet.inference.sources import ImageSource, Sample
from cxrdet.preprocess.listing import parse_shard, select_shard

INTERRUPT_NOTE = "the probability CSV is written only at the end, so none was; a rerun starts over"


def get_args_parser() -> argparse.ArgumentParser:
    from cxrdet.classifier.predict import TTA_CHOICES

    p = argparse.ArgumentParser(
        description="Image-level class probabilities from trained classifier(s) (`cxrdet train-classifier`): "
                    "one row per image, one column per class. Exit 3 if some images failed.")
    p.add_argument("--model", action="append", required=True, metavar="ARTIFACT_DIR",
                   help="exported classifier (RUN/export: model.pt + config.json); repeat to ensemble (mean)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--cache", help="HDF5 cache from `cxrdet prepare` (made with the classifier's cache settings)")
    src.add_argument("--dicom-dir", help="folder of .dicom/.dcm files, prepared exactly as `cxrdet prepare`")
    src.add_argument("--image-dir", help="folder of PNG/JPEG files (recursive; ids as `cxrdet prepare --image-dir`)")
    p.add_argument("--tta", choices=TTA_CHOICES, default="none", help="test-time augmentation (mean of the views)")
    p.add_argument("--folds", help="FOLDS.csv; with --fold, predict only that fold's images (out-of-fold evidence)")
    p.add_argument("--fold", type=int, help="the fold of --folds to predict")
    p.add_argument("--shard", metavar="i/n", help="process shard i of n; combine with `cxrdet merge-probabilities`")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes (default: 0 for --cache on a CPU device, where reading and "
                   "resizing cost less than the cores the workers would take from the forward pass; else 2)")
    p.add_argument("--cam-dir", metavar="DIR", help="also write Grad-CAM heatmap overlays (PNG per image and class) here")
    p.add_argument("--cam-classes", default="top3", metavar="top3|all|ID,...",
                   help="classes explained per image: topK most probable findings, all outputs, or a list of class "
                        "indices / names (default: %(default)s)")
    p.add_argument("--cam-raw", action="store_true",
                   help="with --cam-dir: also the raw heatmaps in DIR/heatmaps.h5 (for `evaluate-classifier --cam`)")
    add_device_flag(p, "the classifiers run")
    p.add_argument("--out", required=True, help="probability CSV image_id,<class>,... (written atomically)")
    return p


def default_workers(from_cache: bool, device: torch.device) -> int:
    """DataLoader workers when ``--workers`` is not given.

    Over a cache on a CPU device a worker's job (an HDF5 read and a resize, well under a
    millisecond per image) is worth less than what it takes from the forward pass: its
    process competes with the forward's threads for the same cores, and an intra-op thread
    that loses its core stalls the others (measured on 2 cores: 0.93x a bare forward loop with
    0 workers, 0.85x with 2; benchmarks/bench_classifier.py). Decoding DICOM or PNG is heavy
    enough to pay for workers, and a GPU leaves the cores to them.
    """
    return 0 if from_cache and device.type == "cpu" else 2


def load_models(dirs: list[str], device: torch.device):
    """Every artifact, checked to share classes, task and cache settings; and their provenance."""
    from cxrdet.classifier.export import load_classifier
    from cxrdet.preprocess.cache import CacheSettings

    models, records, first = [], [], None
    for d in dirs:
        model, cfg = load_classifier(d, map_location=device)
        if first is not None and (cfg.class_names, cfg.task) != (first.class_names, first.task):
            raise UserError(f"--model {d} predicts {cfg.task} {cfg.class_names} but {dirs[0]} predicts "
                            f"{first.task} {first.class_names}; ensembled classifiers need the same classes")
        if first is not None and (cfg.cache_size, cfg.cache_voi) != (first.cache_size, first.cache_voi):
            raise UserError(f"--model {d} was trained on a cache of size {cfg.cache_size} voi {cfg.cache_voi}, "
                            f"{dirs[0]} on size {first.cache_size} voi {first.cache_voi}; they must match")
        first = first or cfg
        models.append((model, cfg))
        records.append(model_record(d, cfg.folds, cfg.fold))
    return models, CacheSettings(size=int(first.cache_size), voi=str(first.cache_voi)), records


def build_source(args: argparse.Namespace, settings) -> ImageSource:
    from cxrdet.inference.image_source import ImageDirSource
    from cxrdet.inference.sources import CacheSource, DicomFolderSource

    if args.cache:
        source: ImageSource = CacheSource(args.cache, settings, with_features=False, with_meta=False)
    elif args.dicom_dir:
        source = DicomFolderSource(args.dicom_dir, settings, with_features=False)
    else:
        source = ImageDirSource(args.image_dir, settings)
    if args.folds is not None:
        from cxrdet.formats.folds import fold_members, read_folds

        wanted = fold_members(read_folds(args.folds), args.fold)
        absent = sorted(set(wanted) - set(source.ids))
        if absent:
            raise UserError(f"{len(absent)} image(s) of fold {args.fold} in {args.folds} are not among the inputs, "
                            f"e.g. {absent[:5]}; pass the input the folds were made for")
        source.restrict(sorted(wanted))
    if args.shard:
        source.restrict(select_shard(source.ids, *parse_shard(args.shard)))
    return source


def run(source: ImageSource, models, device: torch.device, args, cam=None) -> tuple[dict, FailureLog]:
    """The batched loop: ``({image_id: probabilities}, failures)``; ``cam`` (a CamOutput) explains each batch.

    The DataLoader workers read and resize (:class:`ResizeCollate`); this process only runs the models."""
    from cxrdet.classifier.predict import ResizeCollate, ensemble_from_inputs

    collate = ResizeCollate([cfg.size for _, cfg in models], keep_images=cam is not None)
    loader = DataLoader(source, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate)
    probs, failures = {}, FailureLog()
    with tqdm(total=len(source), unit="img", desc="classify", file=sys.stderr, disable=None) as bar:
        for batch in loader:
            for image_id, reason in batch.failed:
                failures.add(image_id, reason)
            if batch.ids:
                try:
                    values = ensemble_from_inputs(models, batch.inputs, device, args.tta)
                    probs.update(zip(batch.ids, values))
                except Exception as e:  # e.g. out of memory: the batch's images are listed, the run goes on
                    for image_id in batch.ids:
                        failures.add(image_id, f"the classifier failed on its batch: {failure_reason(e)}")
                else:
                    if cam is not None:
                        cam.add_batch(kept_samples(batch), values, failures)
            bar.update(len(batch.ids) + len(batch.failed))
    return probs, failures


def kept_samples(batch) -> list[Sample]:
    """The batch's readable images as Samples (images kept by the collate: the heatmaps' input)."""
    return [Sample(i, im.numpy(), hw, {}, {}) for i, im, hw in zip(batch.ids, batch.images, batch.orig_hws)]


def open_cam(args: argparse.Namespace, models, device: torch.device, records: list):
    """The CamOutput of ``--cam-dir`` (None without it), classes checked before any image is read."""
    if args.cam_dir is None:
        if args.cam_raw:
            raise UserError("--cam-raw needs --cam-dir DIR (the raw heatmaps go to DIR/heatmaps.h5)")
        return None
    from cxrdet.classifier.cam import parse_cam_classes
    from cxrdet.inference.cam_output import CamOutput

    classes = parse_cam_classes(args.cam_classes, models[0][1].class_names)
    return CamOutput(args.cam_dir, models, classes, device, args.batch_size, args.cam_raw, records)


def main(args: argparse.Namespace) -> int:
    if (args.folds is None) != (args.fold is None):
        raise UserError("--folds and --fold go together (predict the images of one fold)")
    if args.batch_size < 1 or (args.workers is not None and args.workers < 0):
        raise UserError(f"--batch-size must be >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")
    device = torch_device(args.device, torch.cuda.device_count())
    if args.workers is None:
        args.workers = default_workers(bool(args.cache), device)
    models, settings, records = load_models(args.model, device)
    source = build_source(args, settings)
    cfg = models[0][1]
    print(f"classify: {len(source)} images, {len(models)} {cfg.task} classifier(s) over {len(cfg.class_names)} "
          f"classes, tta={args.tta}, device {device}", file=sys.stderr)
    cam = open_cam(args, models, device, records)
    start = time.perf_counter()
    try:
        probs, failures = run(source, models, device, args, cam)
    except BaseException:
        if cam is not None:
            cam.close(ok=False)
        raise
    elapsed = time.perf_counter() - start
    if cam is not None:
        raw = cam.close()
        print(f"classify: {cam.pictures} heatmap picture(s) in {args.cam_dir}" + (f", raw heatmaps {raw}" if raw else ""),
              file=sys.stderr)
    write_probabilities(args.out, cfg.class_names, probs)
    write_provenance(args.out, [{"models": records, "folds": str(Path(args.folds).resolve()) if args.folds else None,
                                 "fold": args.fold, "shard": args.shard, "tta": args.tta,
                                 "image_ids": sorted(probs)}])
    print(f"classify: {len(probs)}/{len(source)} images in {elapsed:.1f} s -> {args.out}", file=sys.stderr)
    all_failures = FailureLog()
    all_failures.extend(getattr(source, "listing_failures", FailureLog()))
    all_failures.extend(failures)
    return all_failures.report(errors_path(args.out))
