"""``cxrdet infer`` (== ``python infer.py``): batch inference -> Kaggle submission CSV.

inputs (DICOM folder | HDF5 cache | PNGs + sizes CSV) -> DataLoader (workers) -> detector(s),
optional hflip TTA, fused with WBF (cache pixels) -> ORIGINAL DICOM pixels, clipped -> gate
(cxrdet/gate/rules.py, stored thresholds unless overridden) -> submission (atomic, every image once),
plus an image-level CSV, overlays, an errors CSV and a provenance record (which detector
artifacts, trained on which folds, predicted which images: :mod:`cxrdet.formats.provenance`).

A failed image (unreadable, or failing later: the forward pass of its batch, its box mapping,
its overlay) is listed in the errors CSV with its reason, the run goes on, and the exit code is
3. It is left out of the submission (so the file cannot be mistaken for a complete one) unless
``--on-error normal`` asks for it to be predicted "No finding" (``14 1 0 0 1 1``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cxrdet.boxes import HW
from cxrdet.classes import NO_FINDING
from cxrdet.detections import Detections, to_original
from cxrdet.device import torch_device
from cxrdet.errors import InputFailure, UserError, failure_reason, safe_child
from cxrdet.flags import RenamedFlag, add_device_flag
from cxrdet.formats.failures import FailureLog, errors_path
from cxrdet.formats.image_level import image_level_frame, image_level_row, write_image_level
from cxrdet.inference.overlay import write_overlay
from cxrdet.inference.runtime import RUNTIMES, load_predictor, predict_fn
from cxrdet.formats.provenance import model_record, write_provenance
from cxrdet.inference.sources import (
    CacheSource,
    DicomFolderSource,
    ImageSource,
    PngFolderSource,
    Sample,
    collate_samples,
    parse_shard,
    select_shard,
    uncollate,
)
from cxrdet.inference.tta import TTA_CHOICES, FusionConfig, predict_fused

INTERRUPT_NOTE = ("the submission is written only at the end, so none was (overlays drawn so far are "
                  "kept); a rerun starts over")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Batch inference: detector(s) + gate -> Kaggle submission CSV with boxes in original "
        "DICOM pixels (+ image-level CSV, overlays, errors CSV). Exit 3 if some images failed.",
    )
    p.add_argument("--model", action="append", required=True, metavar="ARTIFACT_DIR",
                   help="exported detector (model.pt + config.json, e.g. RUN/export; with --runtime onnx a "
                   "model.onnx from `cxrdet export-onnx` or a folder holding one); repeat to ensemble (WBF)")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch",
                   help="torch = PyTorch on --device; onnx = onnxruntime on CPU (CPUExecutionProvider)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dicom-dir", help="folder of .dicom/.dcm files, preprocessed exactly as `cxrdet prepare`")
    src.add_argument("--cache", help="HDF5 cache from `cxrdet prepare` (its size/windowing must match the detector's)")
    src.add_argument("--png-dir", help="folder of <image_id>.png (8- or 16-bit, any size); needs --png-sizes")
    p.add_argument("--png-sizes", help="CSV image_id,dim0,dim1 of ORIGINAL sizes (dim0 = rows, dim1 = columns)")
    p.add_argument("--gate", help="gate folder (gate.ubj + gate_schema.json from `cxrdet train-gate`)")
    p.add_argument("--low", type=float, help="override the gate's stored low threshold")
    p.add_argument("--high", type=float, help="override the gate's stored high threshold")
    p.add_argument("--tta", choices=TTA_CHOICES, default="none", help="test-time augmentation (fused with WBF)")
    p.add_argument("--wbf-iou", type=float, default=FusionConfig.iou_thr, help="IoU of the WBF that fuses TTA views / models")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (reading/preprocessing)")
    add_device_flag(p, "the detectors and the gate run")
    p.add_argument("--folds", help="FOLDS.csv (image_id,fold) from `cxrdet split`; with --fold, predict only that "
                   "fold's images (out-of-fold detections for `cxrdet train-gate --detections`)")
    p.add_argument("--fold", type=int, help="the fold of --folds to predict (the detector's validation fold)")
    p.add_argument("--shard", metavar="i/n", help="process shard i of n (0 <= i < n); combine with `cxrdet merge-submissions`")
    p.add_argument("--vis-dir", help="write an overlay PNG per image here")
    p.add_argument("--vis-conf", type=float, default=0.3, help="overlays draw boxes scoring at least this "
                   "(drawing only; --conf filters the submission)")
    p.add_argument("--conf", type=float, default=None, help="minimum score of a finding (classes 0-13) kept in "
                   "the submission (default: keep all; low-score boxes cost no mAP). The gate's class-14 rows "
                   "are its decision and are always kept")
    p.add_argument("--vis-min-score", action=RenamedFlag, hint=lambda v: f"renamed to --vis-conf {v}")
    p.add_argument("--image-level-out", help="CSV image_id,p_abnormal,p_0..p_13 (+ clf_<class> with --classifier)")
    p.add_argument("--classifier", action="append", metavar="ARTIFACT_DIR",
                   help="image-level classifier (`cxrdet train-classifier` RUN/export; repeat to average): its "
                   "probabilities join --image-level-out as clf_<class> columns, from the same decoded images")
    p.add_argument("--errors-out", help="errors CSV (default: <out stem>.errors.csv beside --out)")
    p.add_argument("--on-error", choices=("fail", "normal"), default="fail",
                   help="failed images: fail = leave out of the submission (exit 3); normal = predict "
                   "'14 1 0 0 1 1' for them (still listed, exit 3)")
    p.add_argument("--out", required=True, help="submission CSV (image_id,PredictionString), written atomically; "
                   "beside it <out stem>.provenance.json records which detector predicted which images "
                   "(train-gate checks out-of-fold detections with it)")
    return p


@dataclass
class GateRuntime:
    """A loaded gate, the thresholds in force and the feature groups its schema wants."""

    classifier: object
    low: float
    high: float
    groups: frozenset[str]  # subset of {"metadata", "pixel", "detector"}


@dataclass
class Outputs:
    """Everything a run produced, keyed by image_id."""

    predictions: dict[str, Detections] = field(default_factory=dict)
    orig_sizes: dict[str, HW] = field(default_factory=dict)
    image_level: list[dict] = field(default_factory=list)
    classifier_probs: dict[str, dict[str, float]] = field(default_factory=dict)  # id -> clf_<class> -> p
    failures: FailureLog = field(default_factory=FailureLog)
    # called per image with (sample, submitted detections, image-level row) before it is recorded,
    # e.g. to write a DICOM SR; commands above this package inject it (see main)
    on_record: Callable[[Sample, Detections, dict], None] | None = None


def check_args(args: argparse.Namespace) -> None:
    """Flag combinations argparse cannot express."""
    if args.png_dir and not args.png_sizes:
        raise UserError("--png-dir needs --png-sizes CSV (image_id,dim0,dim1 of the original DICOM sizes)")
    if args.png_sizes and not args.png_dir:
        raise UserError("--png-sizes only applies with --png-dir")
    if (args.low is not None or args.high is not None) and not args.gate:
        raise UserError("--low/--high override the gate's thresholds: they need --gate")
    if (args.folds is None) != (args.fold is None):
        raise UserError("--folds and --fold go together (predict the images of one fold)")
    if getattr(args, "classifier", None) and not args.image_level_out:
        raise UserError("--classifier adds columns to the image-level CSV: it needs --image-level-out")
    if args.batch_size < 1 or args.workers < 0:
        raise UserError(f"--batch-size must be >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")
    if not 0 < args.wbf_iou < 1:
        raise UserError(f"--wbf-iou must be in (0, 1), got {args.wbf_iou}")
    if args.conf is not None and not 0 <= args.conf <= 1:
        raise UserError(f"--conf is a minimum score in [0, 1], got {args.conf}")
    if args.runtime == "onnx" and str(args.device).startswith("cuda"):
        raise UserError("--runtime onnx runs on the CPU (onnxruntime's CPUExecutionProvider); drop --device "
                        f"{args.device} or use --runtime torch")


def keep_confident(dets: Detections, conf: float | None) -> Detections:
    """The submission's share of ``dets``: findings scoring at least ``conf`` and every class-14 row.

    Class-14 rows are the gate's call (``14 1`` or ``14 (1-p)``), not a detector score to threshold.
    """
    if conf is None:
        return dets
    return dets.select((dets.scores >= conf) | (dets.class_ids == NO_FINDING))


def load_detectors(dirs: list[str], device: torch.device, runtime: str = "torch") -> tuple[list, object, list[dict]]:
    """Load every artifact; they must share the cache settings they were trained on.

    Also returns each artifact's provenance record (the split it was trained with)."""
    from cxrdet.preprocess.cache import CacheSettings

    models, settings, records = [], None, []
    for d in dirs:
        model, cfg = load_predictor(d, runtime, device)
        if not cfg.cache_size or not cfg.cache_voi:
            raise UserError(f"--model {d}: its config.json records no cache size/windowing (cache_size, "
                            "cache_voi); export it again with this version of `cxrdet train`")
        these = CacheSettings(size=int(cfg.cache_size), voi=str(cfg.cache_voi))
        if settings is not None and these.identity() != settings.identity():
            raise UserError(
                f"--model {d} was trained on cache {these} but {dirs[0]} on {settings}; "
                "ensembled detectors must share the cache size and windowing"
            )
        settings = these
        models.append(model)
        records.append(model_record(d, cfg.folds, cfg.fold))
    return models, settings, records


def load_gate(args: argparse.Namespace) -> GateRuntime | None:
    if not args.gate:
        return None
    from cxrdet.gate.features import feature_group
    from cxrdet.gate.model import GateClassifier

    gate = GateClassifier.load(args.gate)
    low = gate.low_ if args.low is None else args.low
    high = gate.high_ if args.high is None else args.high
    if not 0 <= low < high:
        # high > 1 is allowed: it means "never drop the No finding row" (tuning grids use 1.01)
        raise UserError(f"gate thresholds need 0 <= low < high, got low={low}, high={high}")
    groups = frozenset(feature_group(n) for n in gate.feature_names_)
    return GateRuntime(gate, float(low), float(high), groups)


def build_source(args: argparse.Namespace, settings, with_features: bool) -> ImageSource:
    if args.dicom_dir:
        source: ImageSource = DicomFolderSource(args.dicom_dir, settings, with_features)
    elif args.cache:
        source = CacheSource(args.cache, settings, with_features)
    else:
        source = PngFolderSource(args.png_dir, args.png_sizes, settings.size, with_features)
    if args.folds:
        source.restrict(fold_ids(args.folds, args.fold, source.ids))
    if args.shard:
        i, n = parse_shard(args.shard)
        source.restrict(select_shard(source.ids, i, n))
    return source


def fold_ids(folds_csv: str, fold: int, available: list[str]) -> list[str]:
    """The ids of ``fold`` in FOLDS.csv; every one of them must be among the inputs."""
    from cxrdet.formats.folds import fold_members, read_folds

    folds = read_folds(folds_csv)
    ids = sorted(fold_members(folds, fold))
    if not ids:
        raise UserError(f"--folds {folds_csv} has no image in fold {fold} "
                        f"(folds present: {sorted(set(folds.values()))})")
    absent = sorted(set(ids) - set(available))
    if absent:
        raise UserError(f"{len(absent)} image(s) of fold {fold} in {folds_csv} are not among the inputs, "
                        f"e.g. {absent[:5]}; pass the input (cache) the folds were made for")
    return ids


def gate_probabilities(gate: GateRuntime, samples: list[Sample], dets: list[Detections]) -> np.ndarray:
    """P(abnormal) per sample from the feature groups the gate was trained with."""
    from cxrdet.dicomio.meta import META_COLUMNS
    from cxrdet.gate.features import build_features

    meta = pd.DataFrame([{**{c: s.meta.get(c, np.nan) for c in META_COLUMNS}, "image_id": s.image_id} for s in samples])
    pixels = pd.DataFrame([{"image_id": s.image_id, **s.features} for s in samples]) if "pixel" in gate.groups else None
    evidence = {s.image_id: d for s, d in zip(samples, dets)} if "detector" in gate.groups else None
    features = build_features(meta, pixels, evidence)
    return np.asarray(gate.classifier.p_abnormal(features), dtype=np.float64).reshape(-1)


def process_batch(samples: list[Sample], models: list, gate: GateRuntime | None, args, out: Outputs) -> None:
    """Detect, map to original pixels, gate, record and draw one batch of good samples.

    A failure lists the images it hit and the run goes on (exit 3 at the end), so one bad image
    or one failed batch never costs the submission of all the others.
    """
    try:
        fused = detect_batch(samples, models, args)
    except Exception as e:  # e.g. out of memory on a large batch: every image of it is lost
        fail_all(samples, "the detector failed on its batch", e, out)
        return
    mapped: list[tuple[Sample, Detections]] = []
    for s, det in zip(samples, fused):
        try:
            mapped.append((s, to_original(det, s.image.shape[:2], s.orig_hw)))
        except Exception as e:
            out.failures.add(s.image_id, f"mapping its boxes to the original size failed: {failure_reason(e)}")
    if not mapped:
        return
    good = [s for s, _ in mapped]
    try:
        probs = gate_probabilities(gate, good, [d for _, d in mapped]) if gate else [None] * len(mapped)
    except Exception as e:
        fail_all(good, "the gate failed on its batch", e, out)
        return
    for (s, det), p in zip(mapped, probs):
        try:
            record_image(s, det, p, gate, args, out)
        except Exception as e:
            out.failures.add(s.image_id, failure_reason(e))


def detect_batch(samples: list[Sample], models: list, args) -> list[Detections]:
    """Fused detections (all models, TTA views) per sample, in cache pixels."""
    fns = [predict_fn(m) for m in models]
    return predict_fused(fns, [s.image for s in samples], args.tta, FusionConfig(iou_thr=args.wbf_iou))


def record_image(s: Sample, det: Detections, p, gate: GateRuntime | None, args, out: Outputs) -> None:
    """Gate one image's detections (original pixels), draw its overlay, then record it.

    Recording comes last, so an image that fails on the way is not half in the outputs.
    """
    from cxrdet.gate.rules import apply_gate

    final = apply_gate(det, float(p), gate.low, gate.high) if gate else det
    row = image_level_row(s.image_id, det, p)
    if args.vis_dir:
        try:
            write_overlay(args.vis_dir, s.image_id, s.image, final, s.orig_hw, args.vis_conf)
        except Exception as e:
            raise InputFailure(f"writing its overlay failed: {failure_reason(e)}") from e
    submitted = keep_confident(final, args.conf)
    if out.on_record is not None:
        out.on_record(s, submitted, row)
    out.predictions[s.image_id] = submitted
    out.orig_sizes[s.image_id] = s.orig_hw
    out.image_level.append(row)


def fail_all(samples: list[Sample], what: str, e: Exception, out: Outputs) -> None:
    for s in samples:
        out.failures.add(s.image_id, f"{what}: {failure_reason(e)}")


def run_inference(source: ImageSource, models: list, gate: GateRuntime | None, args,
                  classifiers=None, device=None, on_record: Callable | None = None) -> Outputs:
    """The batched loop over ``source`` with a progress bar (``classifiers``: ``(models, class
    names)`` of ``--classifier``, run on the same decoded images; ``on_record``: called per
    submitted image, e.g. to write its DICOM SR)."""
    loader = DataLoader(
        source,
        batch_size=args.batch_size,
        num_workers=args.workers,
        collate_fn=collate_samples,  # numpy images of different sizes: nothing to pin or stack
    )
    out = Outputs(on_record=on_record)
    with torch.inference_mode(), tqdm(total=len(source), unit="img", desc="infer", file=sys.stderr) as bar:
        for batch in map(uncollate, loader):
            good = [s for s in batch if s.error is None]
            for s in batch:
                if s.error is not None:
                    out.failures.add(s.image_id, s.error)
            if good and classifiers:
                good = classify_batch(good, classifiers, device, out)
            if good:
                process_batch(good, models, gate, args, out)
            bar.update(len(batch))
    return out


def write_outputs(args, out: Outputs, models: list[dict]) -> None:
    """Submission (atomic, sorted ids), its provenance record and the image-level CSV."""
    from cxrdet.detections import normal_detection
    from cxrdet.formats.submission import write_submission

    run = {"models": models, "folds": str(Path(args.folds).resolve()) if args.folds else None,
           "fold": args.fold, "shard": args.shard, "tta": args.tta,
           "image_ids": sorted(out.predictions)}  # predicted ones: not those --on-error normal fills
    if args.on_error == "normal":
        for image_id, _ in out.failures.rows:
            out.predictions[image_id] = normal_detection(1.0)
            # its size is unknown (it failed to read), and the class-14 box is never clipped
            out.orig_sizes[image_id] = (1, 1)
    ids = sorted(out.predictions)
    write_submission(args.out, out.predictions, ids, out.orig_sizes)
    write_provenance(args.out, [run])
    if args.image_level_out:
        rows = [{**row, **out.classifier_probs.get(row["image_id"], {})} for row in out.image_level]
        write_image_level(args.image_level_out, image_level_frame(rows))


def check_vis_names(vis_dir: str, ids: list[str]) -> None:
    """Refuse, before any work, image ids that cannot be overlay file names under ``vis_dir``."""
    for image_id in ids:
        safe_child(vis_dir, image_id, ".png")


def announce(args, source: ImageSource, models: list, settings, device, gate: GateRuntime | None) -> None:
    what = f"{len(source)} images" + (f" of fold {args.fold}" if args.folds else "")
    what += f" (shard {args.shard})" if args.shard else ""
    where = "onnxruntime CPU" if args.runtime == "onnx" else f"device {device}"
    log(f"{what}, {len(models)} detector(s), tta={args.tta}, cache size {settings.size} voi {settings.voi}, {where}")
    if gate is None:
        log("note: no --gate: the submission holds the detections only, with no 'No finding' (class 14) "
            "calls; pass --gate GATE_DIR for the 2-class filter")
        return
    log(f"gate thresholds low={gate.low:g} high={gate.high:g}")
    if args.png_dir and "metadata" in gate.groups:
        log("warning: PNG input has no DICOM metadata (age, sex, spacing, ...): the gate sees only the "
            "original size, so its P(abnormal) is less accurate than from DICOM files or a cache")


def warn_if_in_fold(args, records: list[dict]) -> None:
    """--folds/--fold asks for out-of-fold detections: say so early when a detector trained on
    that fold (train-gate would refuse the result later, after the whole run)."""
    if not args.folds:
        return
    folds = str(Path(args.folds).resolve())
    for r in records:
        if r["folds"] == folds and r["fold"] != args.fold:
            log(f"warning: --fold {args.fold}, but detector {r['artifact']} held out fold {r['fold']} of {folds} "
                f"and trained on fold {args.fold}: these detections are in-fold (train-gate will refuse them)")


def load_classifiers(dirs: list[str], device, settings) -> tuple[list, list[str]]:
    """``(models, class names)`` of ``--classifier``: they see the detector's cache-size images
    (resized to their own input size), so their cache windowing must be the detector's."""
    from cxrdet.inference.classify import load_models

    models, clf_settings, _ = load_models(dirs, device)
    if clf_settings.voi != settings.voi:
        raise UserError(f"--classifier {dirs[0]} was trained on a cache windowed with voi={clf_settings.voi}, the "
                        f"detector on voi={settings.voi}; prepare them the same way")
    log(f"classifier(s) {', '.join(dirs)}: {len(models[0][1].class_names)} classes -> clf_* columns")
    return models, list(models[0][1].class_names)


def log(message: str) -> None:
    print(f"infer: {message}", file=sys.stderr)


def main(args: argparse.Namespace, record_hook: Callable | None = None) -> int:
    """``record_hook(source, gate)``, if given, returns the per-image ``Outputs.on_record``."""
    check_args(args)
    device = torch_device(args.device, torch.cuda.device_count())
    models, settings, records = load_detectors(args.model, device, args.runtime)
    gate = load_gate(args)
    source = build_source(args, settings, with_features=gate is not None and "pixel" in gate.groups)
    if args.vis_dir:
        check_vis_names(args.vis_dir, source.ids)
    announce(args, source, models, settings, device, gate)
    warn_if_in_fold(args, records)
    start = time.perf_counter()
    classifiers = load_classifiers(args.classifier, device, settings) if getattr(args, "classifier", None) else None
    on_record = record_hook(source, gate) if record_hook else None
    out = run_inference(source, models, gate, args, classifiers, device, on_record)
    elapsed = time.perf_counter() - start
    write_outputs(args, out, records)
    n_ok = len(source) - len(out.failures)
    log(f"{n_ok}/{len(source)} images in {elapsed:.1f} s ({n_ok / max(elapsed, 1e-9):.2f} img/s) -> {args.out}")
    if args.image_level_out:
        log(f"image-level probabilities -> {args.image_level_out}")
    if args.vis_dir:
        log(f"overlays -> {args.vis_dir}")
    if len(out.failures):
        fate = ("predicted 'No finding' as --on-error normal asked" if args.on_error == "normal"
                else "LEFT OUT of the submission (rerun with --on-error normal to predict them 'No finding')")
        log(f"{len(out.failures)} failed image(s) {fate}")
    failures = FailureLog()
    failures.extend(getattr(source, "listing_failures", FailureLog()))  # e.g. duplicate ids
    failures.extend(out.failures)
    errors_csv = Path(args.errors_out) if args.errors_out else errors_path(args.out)
    return failures.report(errors_csv)
