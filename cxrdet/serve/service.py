"""What ``cxrdet serve`` loads once at start-up: the detectors, the gate, their versions, limits.

The models are loaded by the same functions as ``cxrdet infer``
(:func:`cxrdet.inference.predictor.load_detectors` / ``load_gate``) and wrapped in the same
:class:`Predictor`, so a served prediction is the batch command's prediction.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from cxrdet.inference.predictor import PredictSettings, Predictor, load_detectors, load_gate


@dataclass(frozen=True)
class ServeConfig:
    """Artifacts and limits of one server."""

    models: tuple[str, ...]  # detector artifact folders (RUN/export); several are fused with WBF
    gate: str | None = None  # gate folder from `cxrdet train-gate`
    classifiers: tuple[str, ...] = ()  # image-level classifier artifacts (probabilities, heatmaps)
    cam_classes: str = "top3"  # heatmaps per image, as `cxrdet classify --cam-classes`
    rescore: str = "auto"  # as `cxrdet infer --rescore`: the gate's out-of-fold decision (docs/gate.md)
    device: str = "auto"  # cpu | cuda | cuda:N | auto
    tta: str = "none"  # as `cxrdet infer --tta`
    conf: float | None = None  # minimum finding score in the answer, as `cxrdet infer --conf`
    max_upload_mb: float = 64.0  # VinBigData DICOMs are 5-30 MB; larger is not a chest film
    max_pixels: int = 50_000_000  # declared size limit: the largest DR panels are ~4300 x 4300 (18 Mpx)
    queue_size: int = 8  # requests admitted at once; more get 503 (memory stays bounded)
    batch_size: int = 1  # requests the model thread may batch (1: answers never depend on load)
    decode_workers: int = 2  # threads decoding DICOMs while the model thread runs
    token: str | None = None  # when set, /v1/* requires "Authorization: Bearer TOKEN"
    min_score: float = 0.3  # start of the page's score slider, default of the overlay PNG
    keep_results: int = 32  # recent results kept in memory for the image / overlay endpoints
    result_ttl_s: float = 600.0  # ... and for at most this long

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


@dataclass
class Service:
    """The loaded models and what the API reports about them."""

    config: ServeConfig
    predictor: Predictor
    cache_settings: object
    versions: dict = field(default_factory=dict)
    classifier: object | None = None  # a ServeClassifier with --classifier, else None

    @property
    def runner(self):
        """What the model thread calls ``predict`` on: the classifier first when there is one."""
        if self.classifier is None:
            return self.predictor
        from cxrdet.serve.classifier import ClassifiedPredictor

        return ClassifiedPredictor(self.predictor, self.classifier)


def sha256_prefix(path: str | os.PathLike, n: int = 16) -> str:
    """The first ``n`` hex digits of a file's SHA-256: which weights answered, exactly."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:n]


def load_service(config: ServeConfig, device) -> Service:
    """Load every artifact once (UserError naming the artifact on a bad one)."""
    from cxrdet import __version__
    from cxrdet.detector.config import DetectorConfig
    from cxrdet.detector.export import CONFIG_FILE, MODEL_FILE

    models, cache_settings, records = load_detectors(list(config.models), device)
    gate = load_gate(config.gate) if config.gate else None
    classifier = load_classifier(config, device, cache_settings) if config.classifiers else None
    from cxrdet.gate.rescore import resolve_rescore

    settings = PredictSettings(tta=config.tta, rescore=resolve_rescore(config.rescore, classifier is not None,
                                                                       gate.rescore if gate else "none"))
    predictor = Predictor(models, gate, settings, classifier.columns if classifier else None)
    detectors = []
    for d, record in zip(config.models, records):
        cfg = DetectorConfig.load(Path(d) / CONFIG_FILE)
        detectors.append({"artifact": record["artifact"], "arch": cfg.model, "cache_size": int(cfg.cache_size),
                          "cache_voi": str(cfg.cache_voi), "folds": record["folds"], "fold": record["fold"],
                          "sha256": sha256_prefix(Path(d) / MODEL_FILE)})
    gate_info = None
    if gate is not None:
        from cxrdet.gate.model import MODEL_FILE as GATE_FILE

        gate_info = {"dir": str(Path(config.gate).resolve()), "low": gate.low, "high": gate.high,
                     "feature_groups": sorted(gate.groups), "sha256": sha256_prefix(Path(config.gate) / GATE_FILE)}
    clf_info = None
    if classifier is not None:
        clf_info = {"artifacts": [str(Path(d).resolve()) for d in config.classifiers],
                    "arch": [cfg.arch for _, cfg in classifier.models], "classes": classifier.class_names,
                    "cam_classes": config.cam_classes,
                    "sha256": [sha256_prefix(Path(d) / "model.pt") for d in config.classifiers]}
    versions = {"cxrdet": __version__, "detectors": detectors, "gate": gate_info, "classifier": clf_info,
                "tta": config.tta, "wbf_iou": predictor.settings.wbf_iou, "device": str(device),
                "cache": {"size": int(cache_settings.size), "voi": str(cache_settings.voi)}}
    return Service(config, predictor, cache_settings, versions, classifier)


def load_classifier(config: ServeConfig, device, cache_settings):
    """The ServeClassifier of ``config.classifiers`` (checked as `cxrdet infer --classifier` checks)."""
    from cxrdet.classifier.cam import CamExplainer, parse_cam_classes
    from cxrdet.inference.infer import load_classifiers
    from cxrdet.serve.classifier import ServeClassifier

    models, names = load_classifiers(list(config.classifiers), device, cache_settings)
    classes = parse_cam_classes(config.cam_classes, names)
    return ServeClassifier(models, names, device, classes, CamExplainer(models, device))
