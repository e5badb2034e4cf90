"""``cxrdet export-onnx``: a detector artifact (``RUN/export``) -> one ONNX file for onnxruntime.

The graph takes one uint8 ``[h, w]`` cache image (dynamic h, w; traced at the config's cache
size) and returns torchvision's ``boxes`` (xyxy cache px), ``scores`` and ``labels`` (1..14),
i.e. the whole Faster R-CNN including its resize/normalise transform, RPN, RoI heads, score
threshold and per-class NMS. Exported with torch's TorchScript-based exporter
(``dynamo=False``, opset 17): the dynamo exporter needs the separate onnxscript package, and the
TorchScript path is the one torchvision tests its detection models with. The detector config
is stored as JSON in the file's ``metadata_props`` (``cxrdet_config``) and checked at load time.
After writing, the file is run with onnxruntime on seeded square, portrait and landscape
images (cache images keep their aspect) and compared with PyTorch on each image alone (boxes
within 1 px, scores within 1e-3), so a broken export fails here, not in production. "Alone"
matters: PyTorch pads the images of a batch to a common size, so a non-square image batched
with a larger one gets (slightly) different detections than by itself; the graph runs one
image at a time, i.e. it equals PyTorch at batch size 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrdet.boxes import resized_hw
from cxrdet.detections import Detections
from cxrdet.detector.transforms import to_model_input
from cxrdet.errors import UserError
from cxrdet.formats.atomic import atomic_path
from cxrdet.inference.runtime import INPUT_NAME, META_CONFIG, META_FORMAT, OUTPUT_NAMES, OnnxPredictor, to_detections

OPSET = 17  # >= 11 is what torchvision's detection ops (RoIAlign, NMS) need; 17 is well supported by ort
BOX_TOL_PX, SCORE_TOL = 1.0, 1e-3  # the parity the export is checked to


class SingleImageDetector(nn.Module):
    """uint8 ``[h, w]`` -> (boxes, scores, labels): the detector as one tensor-in, tensors-out graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        out = self.model([to_model_input(image)])[0]
        return out["boxes"], out["scores"], out["labels"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Export a trained detector (RUN/export: model.pt + config.json) to "
                                            "ONNX for `cxrdet infer --runtime onnx` (onnxruntime, CPU).")
    p.add_argument("--model", required=True, metavar="ARTIFACT_DIR", help="exported detector folder (RUN/export)")
    p.add_argument("--out", required=True, metavar="MODEL.onnx", help="ONNX file to write")
    return p


def sample_image(hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A seeded uint8 noise image (the trace input and the parity checks)."""
    return np.random.default_rng(seed).integers(0, 256, hw, dtype=np.uint8)


def check_shapes(size: int) -> list[tuple[int, int]]:
    """Square, portrait and landscape cache images of long side ``size`` (the parity check)."""
    short = resized_hw((4, 3), size)[1]  # a 4:3 original at the cache size
    return [(size, size), (size, short), (short, size)]


def export(model: nn.Module, cfg, out: Path) -> Path:
    """Trace ``model`` (eval, CPU) into ``out`` with the config in the metadata; atomic."""
    import onnx

    wrapper = SingleImageDetector(model.cpu().eval()).eval()
    example = torch.from_numpy(sample_image(check_shapes(int(cfg.cache_size))[0]))
    axes = {INPUT_NAME: {0: "height", 1: "width"}, **{name: {0: "detections"} for name in OUTPUT_NAMES}}
    with atomic_path(out) as tmp, warnings.catch_warnings():
        # tracing warnings about Python-side shape arithmetic in torchvision: known and harmless,
        # torchvision marks those paths for tracing; the parity check below is the real test
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=axes)
        graph = onnx.load(str(tmp))
        onnx.helper.set_model_props(graph, {META_FORMAT[0]: META_FORMAT[1],
                                            META_CONFIG: json.dumps(cfg.to_dict(), sort_keys=True)})
        onnx.checker.check_model(graph)
        onnx.save(graph, str(tmp))
    return out


def max_differences(ref: Detections, got: Detections) -> tuple[float, float]:
    """(max box px, max score) difference of each ``ref`` detection to its closest ``got`` one.

    Detections are matched per class by box and score, not by position: scores equal to ~1e-7
    may come out of the two runtimes in either order. Different counts are an infinite difference.
    """
    if len(ref) != len(got):
        return float("inf"), float("inf")
    worst_box = worst_score = 0.0
    for cls in np.unique(ref.class_ids):
        a, b = ref.select(ref.class_ids == cls), got.select(got.class_ids == cls)
        if len(a) != len(b):
            return float("inf"), float("inf")
        box = np.abs(a.boxes[:, None, :] - b.boxes[None, :, :]).max(axis=2)
        score = np.abs(a.scores[:, None] - b.scores[None, :])
        best = np.argmin(box + 1000.0 * score, axis=1)  # 1e-3 in score weighs like 1 px
        rows = np.arange(len(a))
        worst_box = max(worst_box, float(box[rows, best].max(initial=0.0)))
        worst_score = max(worst_score, float(score[rows, best].max(initial=0.0)))
    return worst_box, worst_score


def parity(model: nn.Module, predictor: OnnxPredictor, image: np.ndarray) -> tuple[int, float, float]:
    """(detections, max box difference px, max score difference) of torch vs onnxruntime on ``image``."""
    with torch.inference_mode():
        ref = to_detections(*(t.numpy() for t in SingleImageDetector(model)(torch.from_numpy(image))))
    return (len(ref), *max_differences(ref, predictor.predict([image])[0]))


def main(args: argparse.Namespace) -> int:
    from cxrdet.detector.export import load_detector

    model, cfg = load_detector(args.model, map_location="cpu")
    if not cfg.cache_size:
        raise UserError(f"--model {args.model}: its config.json records no cache_size; export it again with "
                        "this version of `cxrdet train`")
    out = Path(args.out)
    if out.suffix != ".onnx":
        raise UserError(f"--out {out}: expected a file name ending in .onnx")
    export(model, cfg, out)
    predictor = OnnxPredictor(out)
    checks = [parity(model, predictor, sample_image(hw, seed=1)) for hw in check_shapes(int(cfg.cache_size))]
    n, box_diff, score_diff = sum(c[0] for c in checks), max(c[1] for c in checks), max(c[2] for c in checks)
    if not (box_diff <= BOX_TOL_PX and score_diff <= SCORE_TOL):
        out.unlink(missing_ok=True)
        raise UserError(f"the ONNX export of {args.model} does not reproduce PyTorch on test images ({n} "
                        f"detections, max box difference {box_diff:.3g} px, score {score_diff:.3g}); {out} was removed")
    print(f"export-onnx: {cfg.model} at cache size {cfg.cache_size} -> {out} (opset {OPSET}; onnxruntime vs "
          f"PyTorch on 3 test images: {n} detections, max diff {box_diff:.2g} px / {score_diff:.2g} score)",
          file=sys.stderr)
    return 0
