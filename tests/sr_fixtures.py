"""Fixtures for the DICOM-output tests (tests/test_sr*.py, tests/test_listen*.py).

``detector_export`` writes a real exported light Faster R-CNN (tests/detector_fixtures.py's tiny
configuration) with seeded random weights and score threshold 0: the SR tests check that what
cxrdet submits is what the SR carries, not how good the boxes are, and an untrained detector
still returns its top ``detections_per_img`` boxes for every image at no training cost.
``write_study`` writes a few small CR/DX images of one patient's study; ``dcmtk`` finds the
dcmtk binaries (pynetdicom installs Python apps named ``storescu``/``storescp`` too, which may
come first on PATH).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import torch

from detector_fixtures import CACHE, limit_threads, tiny_config
from dicom_fixtures import phantom

from cxrdet.detector.export import write_artifact
from cxrdet.detector.model import build_detector
from cxrdet.dicomio.write import derived_uid, write_dicom

STUDY_UID = derived_uid("test study")
PATIENT_ID = "PAT-0042"


def detector_export(out: Path, seed: int = 0, boxes_per_image: int = 3) -> Path:
    limit_threads()
    torch.manual_seed(seed)
    unused = {"cache": "unused.h5", "labels": "unused.csv", "folds": "unused.csv"}
    cfg = tiny_config(unused, out.parent, cache_size=CACHE, cache_voi="auto", score_thresh=0.0,
                      detections_per_img=boxes_per_image)
    return write_artifact(build_detector(cfg).state_dict(), cfg, out)


def write_study(folder: Path, n: int = 3, **extra_per_file) -> dict[str, Path]:
    """``n`` images (DX, CR, DX ...) of one study and patient, different sizes -> {image_id: path}.

    ``extra_per_file`` maps an image index (as ``i<k>``) to ``write_dicom(extra=...)`` overrides.
    """
    paths = {}
    for k in range(n):
        modality = "CR" if k % 2 else "DX"
        extra = {"StudyInstanceUID": STUDY_UID, "PatientID": PATIENT_ID, "PatientName": "TEST^PATIENT",
                 "AccessionNumber": "ACC1", **extra_per_file.get(f"i{k}", {})}
        image_id = f"img{k}"
        paths[image_id] = write_dicom(folder / f"{image_id}.dcm", phantom(120 + 16 * k, 100, seed=k),
                                      modality=modality, extra=extra)
    return paths


def dcmtk(tool: str) -> str:
    """The path of dcmtk's ``tool`` (Debian package dcmtk): the first on PATH that is OFFIS's."""
    for folder in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]:
        candidate = shutil.which(tool, path=folder)
        if candidate:
            out = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=30)
            if "dcmtk" in (out.stdout + out.stderr).lower():
                return candidate
    raise FileNotFoundError(f"dcmtk's {tool} not found; install the Debian package dcmtk")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metadata_gate(out: Path, study: dict[str, Path]) -> Path:
    """A real XGBoost gate on metadata (abnormal = older patients), saved to ``out``, with
    thresholds set between the P(abnormal) of ``study``'s images so that they fall in the three
    zones in order (first: normal, middle: uncertain, last: abnormal)."""
    import numpy as np
    import pandas as pd

    from cxrdet.dicomio.meta import read_metadata
    from cxrdet.gate.features import build_features
    from cxrdet.gate.model import GateClassifier

    rng = np.random.default_rng(0)
    n = 120
    y = (rng.random(n) < 0.5).astype(int)
    meta = pd.DataFrame({
        "image_id": [f"g{i:03d}" for i in range(n)], "rows": "200", "columns": "100",
        "photometric_interpretation": "MONOCHROME2", "bits_stored": "12", "pixel_spacing_row": "0.14",
        "pixel_spacing_col": "0.14", "patient_age": np.where(y == 1, rng.normal(70, 5, n), rng.normal(30, 5, n)),
        "patient_sex": rng.choice(["M", "F"], n), "modality": rng.choice(["DX", "CR"], n),
        "manufacturer": "CXRDET SYNTHETIC",
    })
    gate = GateClassifier(n_estimators=80, learning_rate=0.15, early_stopping_rounds=10, n_folds=3, n_jobs=1)
    gate.fit(build_features(meta), y)
    p = gate.p_abnormal(build_features(pd.DataFrame([read_metadata(path) for path in study.values()])))
    lo, mid, hi = np.asarray(p, dtype=float)
    assert lo < mid < hi, f"the study's P(abnormal) must increase with age, got {p}"
    gate.set_thresholds((lo + mid) / 2, (mid + hi) / 2, "tests: one image per zone")
    gate.save(out)
    return out
