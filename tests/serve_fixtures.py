"""Fixtures for tests/test_serve*.py: a tiny detector artifact, a gate and synthetic DICOMs.

The detector is a randomly initialised light Faster R-CNN at a 96 px cache (seeded: the same
weights, hence the same boxes, every run; score threshold 0.001 keeps its many low-score boxes,
which exercise fusion, mapping and label placement). The gate is fitted on pixel features of
phantom images plus metadata and detector evidence, so all three feature groups are used.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import torch

from cxrdet.detections import Detections
from cxrdet.detector.config import DetectorConfig
from cxrdet.detector.export import write_artifact
from cxrdet.detector.model import build_detector
from cxrdet.dicomio.write import write_dicom
from cxrdet.gate.features import build_features
from cxrdet.gate.model import GateClassifier
from cxrdet.preprocess.features import pixel_features
from dicom_fixtures import phantom

CACHE = 96


def make_artifact(root: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = DetectorConfig(model="fasterrcnn_resnet18_fpn", cache_size=CACHE, cache_voi="auto", min_size=CACHE,
                         max_size=CACHE, detections_per_img=40)
    return write_artifact(build_detector(cfg).state_dict(), cfg, root)


def make_classifier(root: Path, seed: int = 0) -> Path:
    """A randomly initialised resnet18 VinBigData classifier artifact (14 findings + abnormal) at the
    serve fixtures' cache settings: enough for probabilities and Grad-CAM heatmaps to exist."""
    from cxrdet.classes import CLASS_NAMES, NUM_FINDINGS
    from cxrdet.classifier.backbones import build_backbone
    from cxrdet.classifier.config import ClassifierConfig

    torch.manual_seed(seed)
    names = [*CLASS_NAMES[:NUM_FINDINGS], "abnormal"]
    cfg = ClassifierConfig(arch="resnet18", size=64, cache_size=CACHE, cache_voi="auto", task="multilabel",
                           class_names=names, label_source="vinbigdata", pos_weight=[1.0] * len(names))
    root.mkdir(parents=True, exist_ok=True)
    torch.save(build_backbone("resnet18", len(names)).state_dict(), root / "model.pt")
    cfg.save(root / "config.json")
    return root


def make_gate(root: Path, n: int = 40, seed: int = 0, classifier: bool = False) -> Path:
    """With ``classifier``, also trained on the probabilities of :func:`make_classifier`'s classes."""
    rng = np.random.default_rng(seed)
    ids = [f"g{i:03d}" for i in range(n)]
    y = (np.arange(n) % 2).astype(int)
    meta = pd.DataFrame({"image_id": ids, "rows": rng.integers(150, 260, n), "columns": rng.integers(150, 260, n),
                         "photometric_interpretation": rng.choice(["MONOCHROME1", "MONOCHROME2"], n),
                         "bits_stored": 12, "patient_age": np.where(y == 1, 65.0, 40.0) + rng.normal(0, 5, n),
                         "patient_sex": rng.choice(["M", "F"], n), "modality": "DX",
                         "pixel_spacing_row": 0.14, "pixel_spacing_col": 0.14, "manufacturer": "CXRDET SYNTHETIC"})
    pixels = []
    for i, image_id in enumerate(ids):
        image = (phantom(64, 48, seed=i) >> 4).astype(np.uint8)
        pixels.append({"image_id": image_id, **pixel_features(image)})
    evidence = {i: Detections(np.array([[10.0, 10.0, 40.0, 40.0]]), [0.2 + 0.5 * yy], [3]) for i, yy in zip(ids, y)}
    clf = None
    if classifier:
        from cxrdet.classes import CLASS_NAMES, NUM_FINDINGS
        from cxrdet.gate.features import classifier_frame

        names = [*CLASS_NAMES[:NUM_FINDINGS], "abnormal"]
        clf = classifier_frame(pd.DataFrame(rng.uniform(0, 1, (n, len(names))), index=ids, columns=names))
    X = build_features(meta, pd.DataFrame(pixels), evidence, clf)
    gate = GateClassifier(n_estimators=20, learning_rate=0.3, early_stopping_rounds=5, n_folds=2, n_jobs=1)
    gate.fit(X, y).set_thresholds(0.0, 1.01, "test: always boxes + a class-14 row")
    gate.save(root)
    return root


def write_dicoms(folder: Path, n: int = 3) -> list[Path]:
    """Non-square 12-bit phantoms of different sizes (each maps back through its own scale)."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(240, 192), (200, 260), (180, 180), (256, 200)]
    return [write_dicom(folder / f"study{k}.dicom", phantom(*sizes[k % len(sizes)], seed=10 + k), bits_stored=12,
                        window_center=2000, window_width=3500)
            for k in range(n)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(argv: list[str], env: dict | None = None, timeout: float = 120.0):
    """``cxrdet serve ARGS`` in a subprocess on a free 127.0.0.1 port: (process, base URL)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cxrdet", "serve", *map(str, argv), "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"cxrdet serve exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"cxrdet serve did not answer /healthz within {timeout} s:\n{proc.stdout.read()}")


def stop_server(proc) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def rss_kib(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")
