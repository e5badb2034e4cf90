"""Images/s of ``cxrdet serve`` with 4 concurrent clients against ``cxrdet infer`` on the same files.

Baseline: ``cxrdet infer --dicom-dir`` on the DICOM folder (its defaults: batch 4, 2 DataLoader
workers), end to end in this process (model loading, DICOM decoding, forward, submission write).
``cxrdet serve``: the real app under uvicorn on 127.0.0.1 (a thread of this process, so both are
measured in the same process and on the same cores), models loaded before the clock starts;
``--clients`` concurrent httpx clients POST every file once (multipart upload, decoding,
queue, forward, JSON answer). Goal: serve >= 0.8x infer. Latency p50/p95 per request is printed.

Data: a synthetic test set (``cxrdet synth``, realistic non-square sizes, uncompressed and JPEG
2000 DICOMs); weights: a randomly initialised detector (speed does not depend on training).

    python benchmarks/bench_serve.py [--n-images 48] [--size 384] [--clients 4] [--repeats 2] [--device cpu]

Protocol: both warm up first (infer: a run on 4 of the files; serve: one request per client),
then the timed runs alternate (infer first in even repeats) and the best of each is compared.

Measured 2026-12-02 on the 2-core dev box while other jobs kept its load average near 10 (so
absolute rates are low; the ratio is what counts), ``--n-images 24 --size 256``, R18-FPN, CPU:
cxrdet infer 1.66 img/s (runs 1.25, 1.66), cxrdet serve with 4 clients 1.71 img/s (runs 1.21,
1.71), latency p50 2.8 s / p95 3.7 s per request (4 requests in flight share 2 cores): 1.03x.
Not measured on a GPU (no device was available to this task).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from cxrdet.cli import main as cli
from cxrdet.cli import run_main
from cxrdet.detector.config import DetectorConfig
from cxrdet.detector.export import write_artifact
from cxrdet.detector.model import build_detector
from cxrdet.device import torch_device
from cxrdet.flags import add_device_flag


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-images", type=int, default=48, help="DICOM files (default 48)")
    p.add_argument("--size", type=int, default=384, help="cache long side = model input size (default 384)")
    p.add_argument("--arch", default="fasterrcnn_resnet18_fpn", help="detector architecture (default R18-FPN)")
    p.add_argument("--clients", type=int, default=4, help="concurrent serve clients (default 4)")
    p.add_argument("--serve-batch-size", type=int, default=1, help="cxrdet serve --batch-size (default 1)")
    p.add_argument("--repeats", type=int, default=2, help="alternating timed runs of each (default 2)")
    add_device_flag(p, "both run")
    return p


def make_data(root: Path, args) -> tuple[Path, Path]:
    rc = cli(["synth", "--out", str(root / "synth"), "--n-train", "1", "--n-test", str(args.n_images),
              "--seed", "7", "--no-progress", "--workers", "2"])
    if rc:
        raise SystemExit(f"cxrdet synth failed (exit {rc})")
    torch.manual_seed(0)
    cfg = DetectorConfig(model=args.arch, cache_size=args.size, cache_voi="auto", min_size=args.size, max_size=args.size)
    return root / "synth" / "test", write_artifact(build_detector(cfg).state_dict(), cfg, root / "artifact")


def cxrdet_infer(artifact: Path, folder: Path, out: Path, device: str) -> float:
    from cxrdet.inference import infer

    n = len(list(folder.glob("*.dicom")))
    parsed = infer.get_args_parser().parse_args(["--model", str(artifact), "--dicom-dir", str(folder),
                                                 "--out", str(out), "--device", device])
    start = time.perf_counter()
    if run_main(infer.main, parsed, prog="cxrdet infer"):
        raise SystemExit("cxrdet infer failed")
    return n / (time.perf_counter() - start)


class ServerThread:
    """The serve app under uvicorn in a daemon thread on a free 127.0.0.1 port."""

    def __init__(self, artifact: Path, args) -> None:
        import uvicorn

        from cxrdet.serve.app import create_app
        from cxrdet.serve.service import ServeConfig, load_service

        config = ServeConfig(models=(str(artifact),), batch_size=args.serve_batch_size,
                             queue_size=max(8, 2 * args.clients))
        app = create_app(load_service(config, torch_device(args.device, torch.cuda.device_count())))
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


async def _post_all(url: str, files: list[Path], clients: int) -> tuple[float, list[float]]:
    pending = list(files)
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient) -> None:
        while pending:
            path = pending.pop()
            start = time.perf_counter()
            r = await http.post("/v1/predict", files={"file": (path.name, path.read_bytes())})
            if r.status_code != 200:
                raise SystemExit(f"serve answered {r.status_code} for {path.name}: {r.text[:200]}")
            latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return len(files) / (time.perf_counter() - start), latencies


def main() -> None:
    args = get_args_parser().parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder, artifact = make_data(root, args)
        files = sorted(folder.glob("*.dicom"))
        warm = root / "warm"
        warm.mkdir()
        for f in files[:4]:
            shutil.copy(f, warm / f.name)
        cxrdet_infer(artifact, warm, root / "warm.csv", args.device)
        server = ServerThread(artifact, args)
        try:
            asyncio.run(_post_all(server.url, files[:args.clients], args.clients))
            infer_runs, serve_runs, latencies = [], [], []
            for r in range(args.repeats):
                for which in (("infer", "serve") if r % 2 == 0 else ("serve", "infer")):
                    if which == "infer":
                        infer_runs.append(cxrdet_infer(artifact, folder, root / "sub.csv", args.device))
                    else:
                        rate, lat = asyncio.run(_post_all(server.url, files, args.clients))
                        serve_runs.append(rate)
                        latencies += lat
        finally:
            server.stop()
    lat_ms = np.array(latencies) * 1e3
    best_infer, best_serve = max(infer_runs), max(serve_runs)
    print(f"\n{len(files)} DICOMs, {args.arch} at {args.size} px, device {args.device}, torch threads "
          f"{torch.get_num_threads()}, best of {args.repeats} alternating runs each")
    print(f"cxrdet infer --dicom-dir (baseline): {best_infer:7.2f} img/s  (runs {', '.join(f'{x:.2f}' for x in infer_runs)})")
    print(f"cxrdet serve, {args.clients} clients:            {best_serve:7.2f} img/s  "
          f"(runs {', '.join(f'{x:.2f}' for x in serve_runs)}; batch {args.serve_batch_size})")
    print(f"serve latency per request: p50 {np.percentile(lat_ms, 50):.0f} ms, p95 {np.percentile(lat_ms, 95):.0f} ms")
    print(f"ratio serve / infer:                 {best_serve / best_infer:7.2f}x  (goal >= 0.8x)")


if __name__ == "__main__":
    main()
