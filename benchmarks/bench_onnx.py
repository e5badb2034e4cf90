"""Images/s of the detector in onnxruntime (CPU) against the same detector in PyTorch (CPU).

Baseline: PyTorch, the artifact loaded with ``load_detector``, ``cxrdet.detector.predict.predict``
on one image at a time under ``torch.inference_mode`` with ``torch.set_num_threads(--threads)``.
Against it: the file ``cxrdet export-onnx`` writes, run by ``cxrdet.inference.runtime.OnnxPredictor``
(CPUExecutionProvider, ``intra_op_num_threads=--threads``), one image at a time (the exported
graph takes one image). Same model, same uint8 images, same post-processing, same process.

Weights: a randomly initialised detector of ``--arch`` with a fixed seed (speed does not depend
on training; at score_thresh 0.001 an untrained head returns its full ``detections_per_img``
boxes, so both runtimes do the full NMS/post-processing work). Images: seeded noise at the
cache size (square) and 3/4 of it (non-square: the graph has dynamic height/width).

Protocol: both warm up on two images; then timed runs alternate (PyTorch first in even repeats,
onnxruntime first in odd ones) and the best of ``--repeats`` of each is compared. The parity of
the two (max box / score difference over the images) is printed too.

    python benchmarks/bench_onnx.py [--arch fasterrcnn_resnet18_fpn] [--size 384] [--n-images 16] [--threads 2]

Measured 2026-12-02 on the 2-core dev box while other jobs shared it (load average ~9-15, so
absolute figures are several times below a quiet machine's; both runtimes ran in the same
process under the same load), R18-FPN at 384 px, 16 images, 2 threads, best of 3:
PyTorch 0.29 img/s, onnxruntime 0.99 img/s, ratio 3.4x; parity max box diff 9.2e-05 px, max
score diff 3e-07. A profile of the PyTorch run: convolutions ~47%, then separate BatchNorm
(~8%) and ReLU (~8%) passes, which onnxruntime's graph optimiser folds into the convolutions.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxrdet.cli import main as cli
from cxrdet.detector.config import DetectorConfig
from cxrdet.detector.export import load_detector, write_artifact
from cxrdet.detector.model import build_detector
from cxrdet.detector.predict import predict
from cxrdet.ecosystem.onnx_export import max_differences
from cxrdet.inference.runtime import OnnxPredictor


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="fasterrcnn_resnet18_fpn", help="detector architecture (default R18-FPN)")
    p.add_argument("--size", type=int, default=384, help="cache size = model input size (default 384)")
    p.add_argument("--n-images", type=int, default=16, help="images per timed run (default 16)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for both runtimes (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each; the best counts (default 3)")
    return p


def images(size: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = [(size, size), (size, size * 3 // 4)]
    return [rng.integers(0, 256, shapes[k % 2], dtype=np.uint8) for k in range(n)]


def timed(fn, batch: list[np.ndarray]) -> float:
    start = time.perf_counter()
    for image in batch:
        fn([image])
    return len(batch) / (time.perf_counter() - start)


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dataclasses.replace(DetectorConfig(), model=args.arch, min_size=args.size, max_size=args.size,
                                  cache_size=args.size, cache_voi="auto")
        torch.manual_seed(0)
        artifact = write_artifact(build_detector(cfg).state_dict(), cfg, Path(tmp) / "export")
        onnx_file = Path(tmp) / "model.onnx"
        assert cli(["export-onnx", "--model", str(artifact), "--out", str(onnx_file)]) == 0
        model, _ = load_detector(artifact)
        ort = OnnxPredictor(onnx_file, threads=args.threads)
        data = images(args.size, args.n_images)
        runtimes = {"pytorch": lambda ims: predict(model, ims), "onnxruntime": ort.predict}
        for fn in runtimes.values():
            timed(fn, data[:2])  # warm-up
        best = {name: 0.0 for name in runtimes}
        for r in range(args.repeats):
            order = list(runtimes) if r % 2 == 0 else list(runtimes)[::-1]
            for name in order:
                best[name] = max(best[name], timed(runtimes[name], data))
        diffs = [max_differences(predict(model, [im])[0], ort.predict([im])[0]) for im in data]
    print(f"{args.arch} at {args.size} px, {args.n_images} images, {args.threads} threads, best of {args.repeats}")
    print(f"  PyTorch (baseline)  {best['pytorch']:.2f} img/s")
    print(f"  onnxruntime         {best['onnxruntime']:.2f} img/s")
    print(f"  ratio               {best['onnxruntime'] / best['pytorch']:.3f}x")
    print(f"  parity: max box diff {max(d[0] for d in diffs):.2g} px, max score diff {max(d[1] for d in diffs):.2g}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
