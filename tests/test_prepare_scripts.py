"""The thin scripts in preprocessing/ run as subprocesses and agree with cxrdet prepare."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from dicom_fixtures import write_bad_files, write_good_set

ROOT = Path(__file__).resolve().parents[1]


def _run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / "preprocessing" / script), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_scripts_metadata_cache_features(tmp_path):
    src = tmp_path / "in"
    write_good_set(src)
    write_bad_files(src)
    meta = _run("extract_metadata.py", "--dicom-dir", src, "--out", tmp_path / "meta_only.csv")
    assert meta.returncode == 3, meta.stderr
    only = pd.read_csv(tmp_path / "meta_only.csv")
    errors = pd.read_csv(tmp_path / "meta_only.errors.csv")
    assert set(errors["item"]) == {"not_dicom.dicom"}  # tags alone: pixel faults go unnoticed
    assert len(only) == 11 and "m2_12_cr" in set(only.image_id)
    assert only.loc[only.image_id == "m2_12_cr", "patient_age"].item() == 2.5
    prep = _run("dicom_to_hdf5.py", "--dicom-dir", src, "--out", tmp_path / "c.h5",
                "--meta-out", tmp_path / "meta.csv", "--size", 32, "--workers", 1)
    assert prep.returncode == 3 and "Traceback" not in prep.stderr
    feats = _run("pixel_features.py", "--cache", tmp_path / "c.h5", "--out", tmp_path / "f.csv")
    assert feats.returncode == 0, feats.stderr
    again, first = pd.read_csv(tmp_path / "f.csv"), pd.read_csv(tmp_path / "meta_pixel_features.csv")
    assert list(again.image_id) == list(first.image_id) and len(again) == 6
    np.testing.assert_allclose(again.drop(columns="image_id").to_numpy(),
                               first.drop(columns="image_id").to_numpy(), rtol=1e-5, atol=1e-7)
    missing = _run("pixel_features.py", "--cache", tmp_path / "nope.h5", "--out", tmp_path / "g.csv")
    assert missing.returncode == 2 and "not found" in missing.stderr and "Traceback" not in missing.stderr
