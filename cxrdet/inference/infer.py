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

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from cxrdet.boxes import HW
from cxrdet.detections import Detections
from cxrdet.device import torch_device
from cxrdet.errors import InputFailure, UserError, failure_reason, safe_child
from cxrdet.flags import RenamedFlag, add_device_flag
from cxrdet.formats.failures import FailureLog, errors_path
from cxrdet.formats.image_level import image_level_frame, write_image_level
from cxrdet.inference.overlay import write_overlay
from cxrdet.inference.runtime import RUNTIMES
from cxrdet.formats.provenance import write_provenance
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
from cxrdet.inference import predictor
from cxrdet.inference.predictor import (
    GateRuntime,
    ImageResult,
    PredictSettings,
    Predictor,
    keep_confident,
    load_detectors,
)
from cxrdet.inference.tta import TTA_CHOICES, FusionConfig
from cxrdet.gate.rescore import AUTO, RESCORE_CHOICES, resolve_rescore

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
                   "probabilities join --image-level-out as clf_<class> columns, from the same decoded images; "
                   "needed by a gate trained with --classifier-probs and by --rescore classifier")
    p.add_argument("--rescore", choices=(AUTO, *RESCORE_CHOICES), default=AUTO,
                   help="classifier: multiply each finding box's score by the --classifier probability of its "
                   "class before the gate; none: never; auto (default): what `cxrdet train-gate` decided for "
                   "the --gate from out-of-fold predictions (rescore only where it scored better beyond its "
                   "uncertainty; docs/gate.md), none without --classifier or --gate")
    p.add_argument("--errors-out", help="errors CSV (default: <out stem>.errors.csv beside --out)")
    p.add_argument("--on-error", choices=("fail", "normal"), default="fail",
                   help="failed images: fail = leave out of the submission (exit 3); normal = predict "
                   "'14 1 0 0 1 1' for them (still listed, exit 3)")
    p.add_argument("--out", required=True, help="submission CSV (image_id,PredictionString), written atomically; "
                   "beside it <out stem>.provenance.json records which detector predicted which images "
                   "(train-gate checks out-of-fold detections with it)")
    return p


@dataclass
class Outputs:
    """Everything a run produced, keyed by image_id."""

    predictions: dict[str, Detections] = field(default_factory=dict)
    orig_sizes: dict[str, HW] = field(default_factory=dict)
    image_level: list[dict] = field(default_factory=list)
    failures: FailureLog = field(default_factory=FailureLog)
    classifier_probs: dict[str, dict[str, float]] = field(default_factory=dict)  # id -> clf_<class> -> p
    # called per image with (sample, submitted detections, image-level row) before it is recorded,
    # e.g. to write a DICOM SR; commands above this package inject it (see main)
    on_record: Callable[[Sample, Detections, dict], None] | None = None


def check_args(args: argparse.Namespace) -> None:
    """Flag combinations argparse cannot express."""
    if args.png_dir and not args.png_sizes:
        raise UserError("--png-dir needs --png-sizes CSV (image_id,dim0,dim1 of the original DICOM sizes)")
    if args.png_sizes and not args.png_dir:
        raise UserError("--png-sizes only applies with --png-dir")
    uses = args.image_level_out or args.gate or getattr(args, "rescore", AUTO) == "classifier" or getattr(args, "sr_dir", None)
    if getattr(args, "classifier", None) and not uses:
        raise UserError("--classifier is used by --image-level-out (clf_* columns), --gate (a gate trained with "
                        "classifier evidence), --rescore classifier or --sr-dir: pass one of them")
    if (args.low is not None or args.high is not None) and not args.gate:
        raise UserError("--low/--high override the gate's thresholds: they need --gate")
    if (args.folds is None) != (args.fold is None):
        raise UserError("--folds and --fold go together (predict the images of one fold)")
    if args.batch_size < 1 or args.workers < 0:
        raise UserError(f"--batch-size must be >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")
    if not 0 < args.wbf_iou < 1:
        raise UserError(f"--wbf-iou must be in (0, 1), got {args.wbf_iou}")
    if args.conf is not None and not 0 <= args.conf <= 1:
        raise UserError(f"--conf is a minimum score in [0, 1], got {args.conf}")
    if args.runtime == "onnx" and str(args.device).startswith("cuda"):
        raise UserError("--runtime onnx runs on the CPU (onnxruntime's CPUExecutionProvider); drop --device "
                        f"{args.device} or use --runtime torch")


def load_gate(args: argparse.Namespace) -> GateRuntime | None:
    return predictor.load_gate(args.gate, args.low, args.high) if args.gate else None


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


def process_batch(samples: list[Sample], model: Predictor, args, out: Outputs) -> None:
    """Predict one batch of good samples (:class:`Predictor`), then draw and record each image.

    A failure lists the images it hit and the run goes on (exit 3 at the end), so one bad image
    or one failed batch never costs the submission of all the others.
    """
    batch = model.predict(samples, out.classifier_probs)
    for image_id, reason in batch.failures:
        out.failures.add(image_id, reason)
    for result in batch.results:
        try:
            record_image(result, args, out)
        except Exception as e:
            out.failures.add(result.sample.image_id, failure_reason(e))


def record_image(result: ImageResult, args, out: Outputs) -> None:
    """Draw one image's overlay, then record it.

    Recording comes last, so an image that fails on the way is not half in the outputs.
    """
    s = result.sample
    if args.vis_dir:
        try:
            write_overlay(args.vis_dir, s.image_id, s.image, result.final, s.orig_hw, args.vis_conf)
        except Exception as e:
            raise InputFailure(f"writing its overlay failed: {failure_reason(e)}") from e
    submitted = keep_confident(result.final, args.conf)
    if out.on_record is not None:  # the row as the image-level CSV will hold it (clf_* columns included)
        out.on_record(s, submitted, {**result.image_level, **out.classifier_probs.get(s.image_id, {})})
    out.predictions[s.image_id] = submitted
    out.orig_sizes[s.image_id] = s.orig_hw
    out.image_level.append(result.image_level)


def classify_batch(samples: list[Sample], classifiers, device, out: Outputs) -> list[Sample]:
    """Classifier probabilities of the batch (kept for the image-level rows); the samples it could
    classify (a failed batch is listed and left out, so no image-level row lacks its columns)."""
    from cxrdet.classifier.predict import ensemble_probabilities
    from cxrdet.formats.image_level import classifier_column

    models, names = classifiers
    try:
        probs = ensemble_probabilities(models, [s.image for s in samples], device)
    except Exception as e:
        for s in samples:
            out.failures.add(s.image_id, f"the classifier failed on its batch: {failure_reason(e)}")
        return []
    cols = [classifier_column(n) for n in names]
    for s, p in zip(samples, probs):
        out.classifier_probs[s.image_id] = dict(zip(cols, p.tolist()))
    return samples


def run_inference(source: ImageSource, model: Predictor, args, classifiers=None, device=None,
                  on_record: Callable | None = None) -> Outputs:
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
                process_batch(good, model, args, out)
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


def log(message: str) -> None:
    print(f"infer: {message}", file=sys.stderr)


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


def build_predictor(args: argparse.Namespace, models: list, gate: GateRuntime | None, classifiers) -> Predictor:
    """The Predictor of these flags; refuses a gate or --rescore that needs a classifier not given."""
    from cxrdet.formats.image_level import classifier_column

    columns = [classifier_column(n) for n in classifiers[1]] if classifiers else None
    rescore = resolve_rescore(getattr(args, "rescore", AUTO), classifiers is not None, gate.rescore if gate else "none")
    settings = PredictSettings(tta=args.tta, wbf_iou=args.wbf_iou, rescore=rescore)
    return Predictor(models, gate, settings, columns)


def main(args: argparse.Namespace, record_hook: Callable | None = None) -> int:
    """``record_hook(source, gate)``, if given, returns the per-image ``Outputs.on_record``."""
    check_args(args)
    device = torch_device(args.device, torch.cuda.device_count())
    models, settings, records = load_detectors(args.model, device, args.runtime)
    gate = load_gate(args)
    classifiers = load_classifiers(args.classifier, device, settings) if getattr(args, "classifier", None) else None
    model = build_predictor(args, models, gate, classifiers)
    source = build_source(args, settings, with_features=gate is not None and "pixel" in gate.groups)
    if args.vis_dir:
        check_vis_names(args.vis_dir, source.ids)
    announce(args, source, models, settings, device, gate)
    warn_if_in_fold(args, records)
    start = time.perf_counter()
    on_record = record_hook(source, gate) if record_hook else None
    out = run_inference(source, model, args, classifiers, device, on_record)
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
