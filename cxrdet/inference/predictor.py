"""The prediction of ``cxrdet infer`` for a batch of images, as a library: one code path for the
batch command and for ``cxrdet serve``.

Samples (cache-size images from :mod:`cxrdet.inference.sources`) -> every detector and TTA view,
fused with WBF (cache pixels) -> ORIGINAL pixels, clipped (:func:`cxrdet.detections.to_original`) ->
optional rescoring by the image-level classifier (:mod:`cxrdet.gate.rescore`) -> the gate's
P(abnormal) from the feature groups it was trained with (the classifier's probabilities among
them when it was trained with ``--classifier-probs``) -> the gate rules -> one
:class:`ImageResult` per image. A failure lists the images it hit (``BatchResult.failures``) and
the others still come back, so one bad image never costs the rest of its batch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxrdet.classes import NO_FINDING
from cxrdet.detections import Detections, to_original
from cxrdet.errors import UserError, failure_reason
from cxrdet.formats.image_level import image_level_row
from cxrdet.formats.provenance import model_record
from cxrdet.inference.sources import Sample
from cxrdet.inference.tta import FusionConfig, predict_fused, views


@dataclass(frozen=True)
class PredictSettings:
    """How detections are made and merged (the defaults are ``cxrdet infer``'s)."""

    tta: str = "none"  # test-time augmentation: none | hflip (views fused with WBF)
    wbf_iou: float = FusionConfig.iou_thr  # IoU of the WBF that fuses TTA views / models
    rescore: str = "none"  # none | classifier: box score x the classifier's probability of its class

    def __post_init__(self) -> None:
        from cxrdet.gate.rescore import RESCORE_CHOICES

        views(self.tta)  # raises on an unknown mode
        if self.rescore not in RESCORE_CHOICES:
            raise ValueError(f"rescore must be one of {RESCORE_CHOICES}, got {self.rescore!r}")
        if not 0 < self.wbf_iou < 1:
            raise ValueError(f"wbf_iou must be in (0, 1), got {self.wbf_iou}")


@dataclass
class GateRuntime:
    """A loaded gate, the thresholds in force and the feature groups its schema wants."""

    classifier: object
    low: float
    high: float
    groups: frozenset[str]  # subset of {"metadata", "pixel", "detector", "classifier"}
    classifier_features: tuple[str, ...] = ()  # the clf_* columns it was trained with
    rescore: str = "none"  # what `--rescore auto` does with it: train-gate's out-of-fold decision

    def zone(self, p_abnormal: float) -> str:
        """Which gate rule applies: normal (p < low), uncertain (low <= p < high), abnormal."""
        if p_abnormal < self.low:
            return "normal"
        return "uncertain" if p_abnormal < self.high else "abnormal"


@dataclass
class ImageResult:
    """One image's prediction; boxes in ORIGINAL pixels."""

    sample: Sample
    fused: Detections  # all detectors and views fused, before the gate
    final: Detections  # after the gate rules: what the submission holds
    p_abnormal: float | None  # the gate's P(abnormal); None without a gate
    zone: str | None  # the gate rule applied (GateRuntime.zone); None without a gate
    image_level: dict = field(default_factory=dict)  # its image-level CSV row
    classifier: dict | None = None  # the image-level classifier's output, when the caller ran one (serve)


@dataclass
class BatchResult:
    """The images that came through, and (image_id, reason) for those that failed."""

    results: list[ImageResult] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def fail_all(self, samples: Sequence[Sample], what: str, e: BaseException) -> None:
        self.failures.extend((s.image_id, f"{what}: {failure_reason(e)}") for s in samples)


class Predictor:
    """Detectors + optional gate + settings, loaded once; :meth:`predict` runs one batch."""

    def __init__(self, models: list, gate: GateRuntime | None = None,
                 settings: PredictSettings = PredictSettings(),
                 classifier_columns: Sequence[str] | None = None) -> None:
        """``classifier_columns``: the ``clf_*`` columns of the image-level classifier(s) whose
        probabilities :meth:`predict` will be given (None: no classifier)."""
        if not models:
            raise ValueError("a Predictor needs at least one detector")
        check_classifier_inputs(gate, settings, classifier_columns)
        self.models = models
        self.gate = gate
        self.settings = settings

    @property
    def wants_features(self) -> bool:
        """Whether samples must carry pixel features (the gate was trained with them)."""
        return self.gate is not None and "pixel" in self.gate.groups

    def predict(self, samples: Sequence[Sample],
                classifier_probs: Mapping[str, Mapping[str, float]] | None = None) -> BatchResult:
        """Detect, map to original pixels, rescore and gate a batch of readable samples.

        ``classifier_probs``: image id -> ``clf_*`` column -> probability, for the images of the
        batch (needed when the gate or the rescoring uses the classifier)."""
        probs_of = classifier_probs or {}
        import torch

        out = BatchResult()
        samples = list(samples)
        if not samples:
            return out
        try:
            with torch.inference_mode():
                fused = self.detect(samples)
        except Exception as e:  # e.g. out of memory on a large batch: every image of it is lost
            out.fail_all(samples, "the detector failed on its batch", e)
            return out
        mapped: list[tuple[Sample, Detections]] = []
        for s, det in zip(samples, fused):
            try:
                mapped.append((s, to_original(det, s.image.shape[:2], s.orig_hw)))
            except Exception as e:
                out.failures.append((s.image_id, f"mapping its boxes to the original size failed: {failure_reason(e)}"))
        if not mapped:
            return out
        good = [s for s, _ in mapped]
        try:
            probs = self.gate_probabilities(good, [d for _, d in mapped], probs_of) if self.gate \
                else [None] * len(mapped)
        except Exception as e:
            out.fail_all(good, "the gate failed on its batch", e)
            return out
        for (s, det), p in zip(mapped, probs):
            try:
                out.results.append(self._result(s, det, p, probs_of.get(s.image_id)))
            except Exception as e:
                out.failures.append((s.image_id, failure_reason(e)))
        return out

    def detect(self, samples: Sequence[Sample]) -> list[Detections]:
        """Fused detections (all models, TTA views) per sample, in cache pixels."""
        from cxrdet.inference.runtime import predict_fn  # torch or onnxruntime, looked up per call

        fns = [predict_fn(m) for m in self.models]
        return predict_fused(fns, [s.image for s in samples], self.settings.tta,
                             FusionConfig(iou_thr=self.settings.wbf_iou))

    def gate_probabilities(self, samples: Sequence[Sample], dets: Sequence[Detections],
                           classifier_probs: Mapping[str, Mapping[str, float]]) -> np.ndarray:
        """P(abnormal) per sample from the feature groups the gate was trained with."""
        from cxrdet.dicomio.meta import META_COLUMNS
        from cxrdet.gate.features import build_features

        gate = self.gate
        meta = pd.DataFrame([{**{c: s.meta.get(c, np.nan) for c in META_COLUMNS}, "image_id": s.image_id}
                             for s in samples])
        pixels = pd.DataFrame([{"image_id": s.image_id, **s.features} for s in samples]) \
            if "pixel" in gate.groups else None
        evidence = {s.image_id: d for s, d in zip(samples, dets)} if "detector" in gate.groups else None
        clf = None
        if "classifier" in gate.groups:  # columns already clf_*: build_features keeps such names
            clf = pd.DataFrame([{c: classifier_probs.get(s.image_id, {}).get(c, np.nan) for c in gate.classifier_features}
                                for s in samples], index=[s.image_id for s in samples], columns=list(gate.classifier_features))
        features = build_features(meta, pixels, evidence, clf)
        return np.asarray(gate.classifier.p_abnormal(features), dtype=np.float64).reshape(-1)

    def _result(self, s: Sample, det: Detections, p, clf_row: Mapping[str, float] | None) -> ImageResult:
        from cxrdet.gate.rules import apply_gate
        from cxrdet.gate.rescore import rescore

        gate = self.gate
        kept = rescore(det, clf_row or {}) if self.settings.rescore == "classifier" else det
        final = apply_gate(kept, float(p), gate.low, gate.high) if gate else kept
        p_value = None if p is None else float(p)
        zone = gate.zone(p_value) if gate else None
        return ImageResult(s, det, final, p_value, zone, image_level_row(s.image_id, det, p))


def check_classifier_inputs(gate: GateRuntime | None, settings: PredictSettings,
                            classifier_columns: Sequence[str] | None) -> None:
    """Refuse, before any image, a gate or rescoring that needs a classifier it will not get."""
    have = set(classifier_columns or ())
    if settings.rescore == "classifier" and classifier_columns is None:
        raise UserError("rescoring by the classifier (--rescore classifier) needs an image-level classifier "
                        "(--classifier RUN/export)")
    if gate is None or "classifier" not in gate.groups:
        return
    if classifier_columns is None:
        raise UserError("the gate was trained with classifier evidence (feature group 'classifier', "
                        f"{len(gate.classifier_features)} clf_* features); pass --classifier RUN/export, the classifier "
                        "whose out-of-fold probabilities trained it, or use a gate trained without --classifier-probs")
    absent = [c for c in gate.classifier_features if c not in have]
    if absent:
        raise UserError(f"the gate was trained on classifier features {absent[:6]} that the given --classifier does "
                        f"not predict (it predicts {sorted(have)[:6]}...); pass the classifier the gate was trained with")


def keep_confident(dets: Detections, conf: float | None) -> Detections:
    """The submission's share of ``dets``: findings scoring at least ``conf`` and every class-14 row.

    Class-14 rows are the gate's call (``14 1`` or ``14 (1-p)``), not a detector score to threshold.
    """
    if conf is None:
        return dets
    return dets.select((dets.scores >= conf) | (dets.class_ids == NO_FINDING))


def load_detectors(dirs: Sequence[str | os.PathLike], device, runtime: str = "torch") -> tuple[list, object, list[dict]]:
    """Load every detector artifact on ``device`` (``runtime`` torch, or onnx on the CPU); they must share the cache settings they were
    trained on, which are returned with them (the preprocessing inputs need).

    Also returns each artifact's provenance record (the split it was trained with)."""
    from cxrdet.inference.runtime import load_predictor
    from cxrdet.preprocess.cache import CacheSettings

    models, settings, records = [], None, []
    for d in dirs:
        model, cfg = load_predictor(d, runtime, device)
        if not cfg.cache_size or not cfg.cache_voi:
            raise UserError(f"detector artifact {d}: its config.json records no cache size/windowing "
                            "(cache_size, cache_voi); export it again with this version of `cxrdet train`")
        these = CacheSettings(size=int(cfg.cache_size), voi=str(cfg.cache_voi))
        if settings is not None and these.identity() != settings.identity():
            raise UserError(
                f"detector artifact {d} was trained on cache {these} but {dirs[0]} on {settings}; "
                "ensembled detectors must share the cache size and windowing"
            )
        settings = these
        models.append(model)
        records.append(model_record(d, cfg.folds, cfg.fold))
    return models, settings, records


def load_gate(gate_dir: str | os.PathLike, low: float | None = None, high: float | None = None) -> GateRuntime:
    """The gate saved in ``gate_dir``, with its stored thresholds unless ``low``/``high`` override."""
    from cxrdet.gate.features import feature_group
    from cxrdet.gate.model import GateClassifier

    gate = GateClassifier.load(gate_dir)
    low = gate.low_ if low is None else low
    high = gate.high_ if high is None else high
    if not 0 <= low < high:
        # high > 1 is allowed: it means "never drop the No finding row" (tuning grids use 1.01)
        raise UserError(f"gate thresholds need 0 <= low < high, got low={low}, high={high}")
    groups = frozenset(feature_group(n) for n in gate.feature_names_)
    clf = tuple(n for n in gate.feature_names_ if feature_group(n) == "classifier")
    return GateRuntime(gate, float(low), float(high), groups, clf, getattr(gate, "rescore_", "none"))
