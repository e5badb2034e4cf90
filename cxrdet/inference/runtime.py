"""Detector runtimes behind one interface: ``predict(images) -> list[Detections]`` in cache pixels.

* ``torch``: the exported artifact folder (``model.pt`` + ``config.json``) through
  :func:`cxrdet.detector.predict.predict`.
* ``onnx``: a file written by ``cxrdet export-onnx`` (or a folder holding ``model.onnx``), run by
  onnxruntime's CPUExecutionProvider. The file carries the detector's config JSON in its
  ``metadata_props``; a ``config.json`` beside it must say the same, since score threshold, NMS,
  input size and normalisation are baked into the graph and editing the JSON would change nothing.

Both give the same post-processing: torchvision labels 1..14 -> class ids 0..13, highest score
first (:func:`cxrdet.detector.predict.outputs_to_detections` for torch, :func:`to_detections` here).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cxrdet.classes import label_to_class
from cxrdet.detections import Detections
from cxrdet.detector.config import DetectorConfig
from cxrdet.errors import UserError

RUNTIMES = ("torch", "onnx")
ONNX_FILE = "model.onnx"
CONFIG_FILE = "config.json"
META_FORMAT = ("cxrdet_format", "cxrdet-detector-onnx/1")  # metadata key, value: what wrote the file
META_CONFIG = "cxrdet_config"  # metadata key of the DetectorConfig JSON
INPUT_NAME = "image"  # uint8 [h, w] cache image, any size (dynamic axes)
OUTPUT_NAMES = ("boxes", "scores", "labels")  # torchvision's outputs: xyxy cache px, score, label 1..14


def to_detections(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Detections:
    """Raw detector outputs (labels 1..14) -> Detections with class_ids 0..13, highest score first."""
    return Detections(np.asarray(boxes, np.float32).astype(np.float64), np.asarray(scores, np.float32),
                      label_to_class(np.asarray(labels).astype(np.int64))).sorted()


def onnx_path(path: str | os.PathLike) -> Path:
    """The ONNX file of ``path`` (a file, or a folder holding ``model.onnx``)."""
    p = Path(path)
    if p.is_dir():
        if not (p / ONNX_FILE).is_file():
            raise UserError(f"model folder {p} has no {ONNX_FILE}; expected the ONNX file `cxrdet export-onnx` "
                            f"writes (e.g. {p / ONNX_FILE})")
        return p / ONNX_FILE
    if not p.is_file():
        raise UserError(f"ONNX model {p} does not exist; write it with `cxrdet export-onnx`")
    return p


def embedded_config(path: Path) -> DetectorConfig:
    """The DetectorConfig stored in an ONNX file's metadata, refusing files cxrdet did not write."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends: not an ONNX file
        raise UserError(f"{path} is not a readable ONNX file ({type(e).__name__}: {e})") from None
    props = {p.key: p.value for p in model.metadata_props}
    key, value = META_FORMAT
    if props.get(key) != value or META_CONFIG not in props:
        raise UserError(f"{path}: metadata {key}={props.get(key)!r}, expected {value!r} with a {META_CONFIG} entry; "
                        "only files written by `cxrdet export-onnx` carry the detector config inference needs")
    try:
        return DetectorConfig.from_dict(json.loads(props[META_CONFIG]), source=f"{path} ({META_CONFIG})")
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: metadata {META_CONFIG} is not valid JSON ({e})") from None


def check_config_agrees(embedded: DetectorConfig, config_path: Path, onnx_file: Path) -> None:
    """A config.json beside the ONNX file must equal the one inside it, field by field."""
    other = DetectorConfig.load(config_path).to_dict()
    mine = embedded.to_dict()
    differ = sorted(k for k in mine if mine[k] != other.get(k))
    if differ:
        shown = "; ".join(f"{k}: {mine[k]!r} in the ONNX file, {other.get(k)!r} in {config_path.name}"
                          for k in differ[:6])
        raise UserError(f"{onnx_file} and {config_path} disagree ({shown}). The exported graph keeps the "
                        "settings it was exported with; re-export (`cxrdet export-onnx`) from the artifact "
                        "whose config you want, or remove the edited config.json")


class OnnxPredictor:
    """An exported detector in onnxruntime (CPU); ``predict`` as :func:`cxrdet.detector.predict.predict`."""

    def __init__(self, path: str | os.PathLike, threads: int = 0):
        import onnxruntime as ort

        self.path = onnx_path(path)
        self.config = embedded_config(self.path)
        beside = self.path.parent / CONFIG_FILE
        if beside.is_file():
            check_config_agrees(self.config, beside, self.path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)  # 0 = onnxruntime's choice (all cores)
        options.log_severity_level = 3  # ort warns about every empty RoI tensor's shape: noise
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detections per uint8 ``[h, w]`` image (cache pixels, class_ids 0..13), one run per image."""
        out = []
        for image in images:
            image = np.ascontiguousarray(np.asarray(image))
            if image.dtype != np.uint8 or image.ndim != 2:
                raise ValueError(f"the ONNX detector takes uint8 [h, w] images, got {image.dtype} {image.shape}")
            out.append(to_detections(*self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: image})))
        return out


def load_predictor(path: str, runtime: str, device) -> tuple[object, DetectorConfig]:
    """(model for :func:`predict_fn`, its DetectorConfig) for ``runtime`` in :data:`RUNTIMES`."""
    if runtime == "onnx":
        predictor = OnnxPredictor(path)
        return predictor, predictor.config
    if runtime != "torch":
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    from cxrdet.detector.export import load_detector

    model, cfg = load_detector(path, map_location=device)
    return model.to(device).eval(), cfg


def predict_fn(model) -> Callable[[Sequence[np.ndarray]], list[Detections]]:
    """The images -> Detections call of a loaded model, whatever its runtime."""
    if isinstance(model, OnnxPredictor):
        return model.predict
    from cxrdet.detector.predict import predict

    return lambda images: predict(model, images)
