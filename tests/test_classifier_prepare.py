"""`cxrdet prepare --image-dir`: PNG/JPEG folders (8/16-bit grey, RGB, a broken file, an
ImageFolder layout) into the HDF5 cache with the same resize, resume and errors CSV as DICOM;
image ids made from relative paths stay safe and collisions are listed."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrdet.cli import main as cli
from cxrdet.errors import safe_child
from cxrdet.preprocess.cache import CacheReader
from cxrdet.preprocess.image_files import image_id_from_relpath
from cxrdet.preprocess.image_read import BadImageError, read_image_file


def _write(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels)
    return path


def _errors(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {row["item"]: row["reason"] for row in csv.DictReader(f)}


@pytest.mark.parametrize("rel, expected", [
    ("img001.png", "img001"),
    ("Pneumonia/img001.png", "Pneumonia__img001"),
    ("Lung Opacity/batch 2/x.jpeg", "Lung_Opacity__batch_2__x"),
    ("a/../../etc.png", None),
    ("..hidden.png", "_..hidden"),
    ("dir\\evil/name?.png", "dir_evil__name_"),
])
def test_image_ids_from_relative_paths_are_flat_and_safe(tmp_path, rel, expected):
    if expected is None:
        with pytest.raises(ValueError):
            image_id_from_relpath(rel)
        return
    image_id = image_id_from_relpath(rel)
    assert image_id == expected
    assert safe_child(tmp_path, image_id, ".png").parent == tmp_path.resolve()


def test_reader_8bit_16bit_rgb_and_broken(tmp_path):
    grey8 = np.array([[0, 51], [102, 255]], np.uint8)
    display, meta = read_image_file(_write(tmp_path / "g8.png", grey8))
    np.testing.assert_allclose(display, grey8 / 255.0, atol=1e-7)  # 8-bit keeps its grey levels
    assert (meta["image_id"], meta["rows"], meta["columns"], meta["bits_stored"]) == ("g8", 2, 2, 8)

    grey16 = np.array([[1000, 2000], [3000, 5000]], np.uint16)
    display, meta = read_image_file(_write(tmp_path / "g16.png", grey16))
    np.testing.assert_allclose(display, [[0, 0.25], [0.5, 1.0]], atol=1e-6)  # min-max stretched
    assert meta["bits_stored"] == 16 and meta["voi_applied"] == "minmax"

    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[..., 2] = 255  # pure red: luma 0.299
    display, meta = read_image_file(_write(tmp_path / "red.png", bgr))
    assert display.shape == (2, 3) and meta["photometric_interpretation"] == "RGB"
    np.testing.assert_allclose(display, 76 / 255.0, atol=1e-6)

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(BadImageError, match="not a readable PNG"):
        read_image_file(broken)


def test_prepare_image_dir_end_to_end(tmp_path):
    src = tmp_path / "images"
    rng = np.random.default_rng(0)
    _write(src / "Normal" / "a.png", rng.integers(0, 256, (80, 60), dtype=np.uint8))
    _write(src / "Normal" / "sub" / "b.jpg", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    ramp = np.tile(np.linspace(1000, 4000, 128), (64, 1)).astype(np.uint16)  # 12-bit values in 16-bit
    _write(src / "Pneumonia" / "c.png", ramp)
    _write(src / "Pneumonia__c.png", np.full((10, 10), 7, np.uint8))  # collides with Pneumonia/c.png
    (src / "Pneumonia" / "bad.png").write_bytes(b"not a png at all")
    out = tmp_path / "cache.h5"
    args = ["prepare", "--image-dir", str(src), "--out", str(out), "--meta-out", str(tmp_path / "meta.csv"),
            "--size", "32", "--workers", "1"]
    assert cli(args) == 3  # the broken file and the collision are listed, the rest is written
    with CacheReader(out) as cache:
        assert cache.ids == ["Normal__a", "Normal__sub__b", "Pneumonia__c"]
        image, attrs = cache.read("Normal__a")
        assert image.shape == (32, 24) and (attrs["orig_height"], attrs["orig_width"]) == (80, 60)
        assert cache.read("Pneumonia__c")[0].shape == (16, 32)  # same long-side resize as DICOM
        stretched = cache.read("Pneumonia__c")[0]
        assert stretched.min() <= 5 and stretched.max() >= 250  # 16-bit stretched to the full range
    errors = _errors(tmp_path / "cache.errors.csv")
    assert "not a readable PNG" in errors["Pneumonia/bad.png"]
    assert "collides with Pneumonia/c.png" in errors["Pneumonia__c.png"]
    meta = (tmp_path / "meta.csv").read_text().splitlines()
    assert meta[0].startswith("image_id,rows,columns") and len(meta) == 4

    # resumable: a rerun writes nothing new and keeps the same cache
    assert cli(args) == 3
    with CacheReader(out) as cache:
        assert len(cache) == 3


def test_prepare_needs_exactly_one_source(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli(["prepare", "--image-dir", str(tmp_path), "--dicom-dir", str(tmp_path), "--out", "x.h5",
             "--meta-out", "m.csv"])
    assert e.value.code == 2
    assert cli(["prepare", "--image-dir", str(tmp_path), "--out", str(tmp_path / "x.h5"),
                "--meta-out", str(tmp_path / "m.csv")]) == 2
    assert "no .png, .jpg or .jpeg files" in capsys.readouterr().err
