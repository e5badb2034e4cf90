"""`cxrdet synth` end to end on a tiny set: files, label CSVs, DICOM variety, determinism, CLI."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from cxrdet import cli
from cxrdet.classes import CLASS_NAMES, NO_FINDING
from cxrdet.errors import UserError
from cxrdet.formats.labels import read_labels
from cxrdet.synth import SynthConfig, generate_dataset
from cxrdet.synth.acquisition import encode
from cxrdet.synth.dataset import render_image
from cxrdet.synth.plan import plan_split

ARGS = dict(n_train=14, n_test=6, scale=0.08, seed=7)  # ~230x190 px images: quick to write
COLUMNS = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    argv = ["synth", "--out", str(out), "--no-progress"]
    for k, v in ARGS.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    assert cli.main(argv) == 0
    return out


def _sizes(folder: Path) -> dict[str, tuple[int, int]]:
    sizes = {}
    for p in sorted(folder.glob("*.dicom")):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        sizes[p.stem] = (int(ds.Rows), int(ds.Columns))
    return sizes


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_with_any_worker_count(synth_dir, tmp_path):
    other = tmp_path / "again"
    generate_dataset(other, SynthConfig(**ARGS, workers=2, progress=False))
    first, second = _digests(synth_dir), _digests(other)
    assert len(first) == ARGS["n_train"] + ARGS["n_test"] + 3  # DICOMs, 2 CSVs, config
    assert first == second
    generate_dataset(tmp_path / "seed8", SynthConfig(**{**ARGS, "seed": 8}, progress=False))
    assert not set(_digests(tmp_path / "seed8").values()) & set(first.values())


def test_image_ids_and_files(synth_dir):
    train, test = _sizes(synth_dir / "train"), _sizes(synth_dir / "test")
    assert len(train) == ARGS["n_train"] and len(test) == ARGS["n_test"]
    assert not set(train) & set(test)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in [*train, *test])
    assert not list(synth_dir.rglob("*.partial"))


def test_train_csv_is_vinbigdata_format_with_three_readers(synth_dir):
    sizes = _sizes(synth_dir / "train")
    raw = pd.read_csv(synth_dir / "train.csv", dtype=str, keep_default_na=False)
    assert list(raw.columns) == COLUMNS
    labels = read_labels(synth_dir / "train.csv", image_sizes=sizes)  # the strict project reader
    assert set(labels.image_id) == set(sizes)
    assert (labels.class_name == [CLASS_NAMES[c] for c in labels.class_id]).all()
    assert labels.rad_id.str.fullmatch(r"R([1-9]|1[0-7])").all()
    for image_id, g in labels.groupby("image_id"):
        assert g.rad_id.nunique() == 3
        h, w = sizes[image_id]
        boxes = g[g.class_id != NO_FINDING][["x_min", "y_min", "x_max", "y_max"]].to_numpy()
        assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
        assert boxes.min(initial=0) >= 0 and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        normal_rows = g[g.class_id == NO_FINDING]
        assert normal_rows[["x_min", "y_min", "x_max", "y_max"]].isna().all().all()
        # a reader who marks something writes no "No finding" row, and the other way round
        for _, r in g.groupby("rad_id"):
            assert (r.class_id == NO_FINDING).sum() in (0, 1)
            assert len(r) == 1 or (r.class_id != NO_FINDING).all()
    empty_coords = raw[raw.class_id == str(NO_FINDING)][["x_min", "y_min", "x_max", "y_max"]]
    assert (empty_coords == "").all().all()


def test_normal_images_have_three_no_finding_rows_and_counts_match_plan(synth_dir):
    labels = read_labels(synth_dir / "train.csv")
    specs = plan_split(ARGS["seed"], "train", ARGS["n_train"], SynthConfig.normal_fraction, ARGS["scale"])
    n_normal = sum(s.normal for s in specs)
    assert n_normal == round(ARGS["n_train"] * SynthConfig.normal_fraction)
    for s in specs:
        g = labels[labels.image_id == s.image_id]
        if s.normal:
            assert (g.class_id == NO_FINDING).sum() == 3 and len(g) == 3
        else:  # every true finding is marked by at least 2 of the 3 readers
            for c in s.findings:
                assert g[g.class_id == c].rad_id.nunique() >= 2


def test_test_csv_holds_consensus_boxes(synth_dir):
    sizes = _sizes(synth_dir / "test")
    labels = read_labels(synth_dir / "test.csv", image_sizes=sizes)
    assert set(labels.image_id) == set(sizes)
    assert (labels.rad_id == "consensus").all()
    assert not labels.duplicated(["image_id", "class_id"]).any()  # one box per image and class
    for _, g in labels.groupby("image_id"):
        assert (g.class_id == NO_FINDING).sum() == 0 or len(g) == 1
    specs = plan_split(ARGS["seed"], "test", ARGS["n_test"], SynthConfig.normal_fraction, ARGS["scale"])
    for s in specs:  # the consensus boxes are exactly the drawn lesions
        truth = render_image(s)
        got = labels[labels.image_id == s.image_id]
        if s.normal:
            assert got.class_id.tolist() == [NO_FINDING]
        else:
            np.testing.assert_array_equal(got[["x_min", "y_min", "x_max", "y_max"]].to_numpy(), truth.boxes)


def test_dicoms_look_like_real_exports_and_decode(synth_dir):
    files = sorted((synth_dir / "train").glob("*.dicom")) + sorted((synth_dir / "test").glob("*.dicom"))
    seen = {"photometric": set(), "bits": set(), "syntax": set(), "modality": set(), "square": 0}
    for p in files:
        ds = pydicom.dcmread(p)
        seen["photometric"].add(ds.PhotometricInterpretation)
        seen["bits"].add(int(ds.BitsStored))
        seen["syntax"].add(ds.file_meta.TransferSyntaxUID.name)
        seen["modality"].add(ds.Modality)
        seen["square"] += ds.Rows == ds.Columns
        assert ds.PatientSex in {"M", "F"}
        assert "PatientAge" not in ds or re.fullmatch(r"\d{3}Y", ds.PatientAge)
        assert ds.Manufacturer and len(ds.PixelSpacing) == 2
        pixels = ds.pixel_array
        assert pixels.shape == (ds.Rows, ds.Columns)
        assert pixels.max() < 2 ** ds.BitsStored
    assert seen["photometric"] == {"MONOCHROME1", "MONOCHROME2"}
    assert len(seen["bits"]) >= 2 and seen["bits"] <= {12, 14, 16}
    assert any("JPEG 2000" in s for s in seen["syntax"]) and any("RLE" in s for s in seen["syntax"])
    assert seen["modality"] <= {"CR", "DX"}
    assert seen["square"] < len(files) / 2


def test_compressed_pixels_are_the_rendered_image_exactly(synth_dir):
    specs = plan_split(ARGS["seed"], "train", ARGS["n_train"], SynthConfig.normal_fraction, ARGS["scale"])
    checked = 0
    for s in specs:
        if s.acquisition.transfer_syntax not in {"jpeg2000", "rle"}:
            continue
        ds = pydicom.dcmread(synth_dir / "train" / f"{s.image_id}.dicom")
        np.testing.assert_array_equal(ds.pixel_array, encode(render_image(s).image, s.acquisition))
        checked += 1
    assert checked >= 2


def test_monochrome1_is_stored_inverted(synth_dir):
    """Lungs (dark on the display) must hold high stored values in MONOCHROME1 files."""
    specs = plan_split(ARGS["seed"], "train", ARGS["n_train"], SynthConfig.normal_fraction, ARGS["scale"])
    for s in specs[:8]:
        stored = pydicom.dcmread(synth_dir / "train" / f"{s.image_id}.dicom").pixel_array.astype(float)
        display = render_image(s).image
        corr = np.corrcoef(stored.ravel(), display.ravel())[0, 1]
        assert (corr < -0.9) if s.acquisition.photometric == "MONOCHROME1" else (corr > 0.9)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--n-train", "0"], "--n-train: n_train must be at least 1, got 0"),
        (["--n-test", "-3"], "--n-test: n_test must be at least 1, got -3"),
        (["--scale", "3"], "--scale: scale must be in [0.05, 1]"),
        (["--normal-fraction", "1.5"], "--normal-fraction: normal_fraction must be in [0, 1], got 1.5"),
        (["--workers", "0"], "--workers: workers must be at least 1, got 0"),
    ],
)
def test_cli_rejects_bad_values(tmp_path, capsys, extra, message):
    assert cli.main(["synth", "--out", str(tmp_path / "d"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()


def test_cli_refuses_a_file_as_out_and_an_existing_dataset(tmp_path, capsys, synth_dir):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert cli.main(["synth", "--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert cli.main(["synth", "--out", str(synth_dir)]) == 2
    assert f"--out {synth_dir} already holds a dataset" in (err := capsys.readouterr().err)
    assert "pass --overwrite to replace it" in err
    with pytest.raises(SystemExit) as e:  # argparse: not a number
        cli.main(["synth", "--out", str(tmp_path / "d"), "--n-train", "many"])
    assert e.value.code == 2


def test_overwrite_replaces_a_larger_dataset(tmp_path):
    out = tmp_path / "d"
    generate_dataset(out, SynthConfig(n_train=3, n_test=2, scale=0.05, seed=1, progress=False))
    cfg = SynthConfig(n_train=2, n_test=1, scale=0.05, seed=1, overwrite=True, progress=False)
    generate_dataset(out, cfg)
    assert len(list((out / "train").glob("*.dicom"))) == 2
    assert len(list((out / "test").glob("*.dicom"))) == 1
    assert set(read_labels(out / "train.csv").image_id) == {p.stem for p in (out / "train").glob("*.dicom")}


def test_an_interrupted_run_is_redone_but_foreign_dicoms_are_refused(tmp_path):
    cfg = SynthConfig(n_train=2, n_test=1, scale=0.05, seed=2, progress=False)
    out = tmp_path / "d"
    generate_dataset(out, cfg)
    expected = _digests(out)
    (out / "train.csv").unlink()  # as if killed before the labels were written
    (out / "test.csv").unlink()
    (out / "train" / "leftover.dicom.partial").write_bytes(b"half")
    generate_dataset(out, cfg)
    assert _digests(out) == expected
    foreign = tmp_path / "mine"
    (foreign / "train").mkdir(parents=True)
    (foreign / "train" / "scan.dicom").write_bytes(b"not ours")
    with pytest.raises(UserError, match="already holds a dataset"):
        generate_dataset(foreign, cfg)
    assert (foreign / "train" / "scan.dicom").read_bytes() == b"not ours"


def test_fusing_the_readers_recovers_the_drawn_lesions(synth_dir):
    from cxrdet.boxes import iou_matrix
    from cxrdet.fusion import fuse_readers

    sizes = _sizes(synth_dir / "train")
    labels = read_labels(synth_dir / "train.csv", image_sizes=sizes)
    fused = fuse_readers(labels, method="consensus", iou_thr=0.5, min_readers=2, image_sizes=sizes)
    specs = plan_split(ARGS["seed"], "train", ARGS["n_train"], SynthConfig.normal_fraction, ARGS["scale"])
    n_truth = 0
    for s in specs:
        truth = render_image(s)
        got = fused[(fused.image_id == s.image_id) & (fused.class_id != NO_FINDING)]
        assert sorted(got.class_id) == sorted(truth.class_ids)  # nothing missed, nothing extra
        for box, c in zip(truth.boxes, truth.class_ids):
            mine = got[got.class_id == c][["x_min", "y_min", "x_max", "y_max"]].to_numpy()
            assert iou_matrix(box[None], mine).max() > 0.75
            n_truth += 1
    assert n_truth >= 5


def test_config_and_folder_errors_name_the_value_not_a_flag(tmp_path):
    from cxrdet.synth.dataset import DatasetExists, SynthConfigError

    with pytest.raises(SynthConfigError) as e:
        SynthConfig(scale=3.0).validate()
    assert e.value.field == "scale" and str(e.value) == "scale must be in [0.05, 1] (1 = real VinBigData sizes), got 3.0"
    (tmp_path / "train.csv").write_text("image_id\n")
    with pytest.raises(DatasetExists) as e:
        generate_dataset(tmp_path, SynthConfig(n_train=1, n_test=1, scale=0.05, progress=False))
    assert str(e.value).startswith(f"{tmp_path} already holds a dataset (train.csv)") and "--" not in str(e.value)
