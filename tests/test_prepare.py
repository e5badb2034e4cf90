"""``cxrdet prepare`` / ``merge-cache`` end to end on tiny DICOM folders."""

import csv

import h5py
import numpy as np
import pandas as pd
import pytest
from dicom_fixtures import write_bad_files, write_good_set

import cxrdet.preprocess.pipeline as pipeline_mod
import cxrdet.preprocess.prepare as prepare_mod
from cxrdet.boxes import resized_hw
from cxrdet.cli import main
from cxrdet.dicomio.meta import META_COLUMNS
from cxrdet.errors import FailureLog, UserError
from cxrdet.preprocess.cache import CacheReader, CacheSettings, CacheWriter, partial_path
from cxrdet.preprocess.prepare import parse_shard, run_prepare


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dicoms")
    write_good_set(folder)
    return folder


def _prepare(src, out_dir, *extra):
    out_dir.mkdir(parents=True, exist_ok=True)
    return main(["prepare", "--dicom-dir", str(src), "--out", str(out_dir / "c.h5"),
                 "--meta-out", str(out_dir / "meta.csv"), "--size", "32", *extra])


def _images(path):
    r = CacheReader(path)
    return {i: r.read(i) for i in r.ids}


def test_bad_files_are_listed_good_ones_written_exit_3(tmp_path, dicom_dir, capsys):
    src = tmp_path / "mixed"
    write_good_set(src)
    bad = write_bad_files(src)
    assert _prepare(src, tmp_path / "o", "--workers", "2") == 3
    errors = {row["item"]: row["reason"] for row in csv.DictReader(open(tmp_path / "o" / "c_errors.csv"))}
    assert set(errors) == set(bad)
    for name, reason in bad.items():
        assert reason in errors[name]
    assert "6 input(s) failed" in capsys.readouterr().err
    cache = CacheReader(tmp_path / "o" / "c.h5", expect=CacheSettings(size=32))
    assert len(cache) == 6
    for image_id in cache.ids:
        image, attrs = cache.read(image_id)
        assert image.dtype == np.uint8
        assert image.shape == resized_hw((attrs["orig_height"], attrs["orig_width"]), 32) == (32, 24)
    meta = pd.read_csv(tmp_path / "o" / "meta.csv")
    assert list(meta.columns[: len(META_COLUMNS)]) == META_COLUMNS
    assert list(meta.image_id) == cache.ids
    assert set(meta.voi_applied) == {"window", "voi_lut", "minmax"}
    feats = pd.read_csv(tmp_path / "o" / "meta_pixel_features.csv")
    assert list(feats.image_id) == cache.ids and "px_entropy" in feats and len(feats.columns) > 20
    # same images as the in-process (workers=1) path
    assert _prepare(src, tmp_path / "p", "--workers", "1") == 3
    one, two = _images(tmp_path / "p" / "c.h5"), _images(tmp_path / "o" / "c.h5")
    assert one.keys() == two.keys() and all(np.array_equal(one[k][0], two[k][0]) for k in one)


def test_clean_run_exits_0_with_empty_errors_csv(tmp_path, dicom_dir):
    assert _prepare(dicom_dir, tmp_path, "--workers", "1", "--errors-out", str(tmp_path / "e.csv"),
                    "--features-out", str(tmp_path / "f.csv")) == 0
    assert open(tmp_path / "e.csv").read().strip() == "item,reason"
    assert len(pd.read_csv(tmp_path / "f.csv")) == 6


def test_killed_run_resumes_and_skips_finished_images(tmp_path, dicom_dir, monkeypatch):
    out, calls = tmp_path / "c.h5", []
    real = pipeline_mod.preprocess_file  # workers=1 runs the pipeline in this process

    def dies_after_two(path, settings):
        if len(calls) == 3:
            raise KeyboardInterrupt  # what Ctrl-C or a kill does mid-run
        calls.append(path.name)
        return real(path, settings)

    monkeypatch.setattr(pipeline_mod, "preprocess_file", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(dicom_dir, out, CacheSettings(size=32), workers=1)
    assert not out.exists() and partial_path(out).exists()
    with pytest.raises(UserError, match="incomplete"):
        CacheReader(out)
    monkeypatch.setattr(pipeline_mod, "preprocess_file", real)
    assert run_prepare(dicom_dir, out, CacheSettings(size=32), workers=1) == 3  # only the rest
    assert len(CacheReader(out)) == 6 and not partial_path(out).exists()
    stamp = out.stat().st_mtime_ns
    assert run_prepare(dicom_dir, out, CacheSettings(size=32), workers=1) == 0  # all done
    assert out.stat().st_mtime_ns == stamp  # a no-op rerun leaves the finished cache alone


def test_rerun_with_other_settings_is_refused(tmp_path, dicom_dir, capsys):
    assert _prepare(dicom_dir, tmp_path, "--workers", "1") == 0
    assert _prepare(dicom_dir, tmp_path, "--workers", "1", "--voi", "minmax") == 2
    assert "'voi': 'minmax'" in capsys.readouterr().err
    assert CacheReader(tmp_path / "c.h5").settings.voi == "auto"  # untouched


def test_shards_merged_equal_the_unsharded_cache(tmp_path, dicom_dir):
    assert _prepare(dicom_dir, tmp_path / "all", "--workers", "1") == 0
    for i in range(2):
        assert _prepare(dicom_dir, tmp_path / f"s{i}", "--workers", "1", "--shard", f"{i}/2") == 0
    sizes = [len(CacheReader(tmp_path / f"s{i}" / "c.h5")) for i in range(2)]
    assert sizes == [3, 3]
    shards = [str(tmp_path / f"s{i}" / "c.h5") for i in range(2)]
    assert main(["merge-cache", "--out", str(tmp_path / "m.h5"), "--meta-out",
                 str(tmp_path / "m.csv"), *shards]) == 0
    merged, whole = _images(tmp_path / "m.h5"), _images(tmp_path / "all" / "c.h5")
    assert merged.keys() == whole.keys()
    for k in whole:
        np.testing.assert_array_equal(merged[k][0], whole[k][0])
        assert merged[k][1] == whole[k][1]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "m.csv"), pd.read_csv(tmp_path / "all" / "meta.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "m_pixel_features.csv"),
                                  pd.read_csv(tmp_path / "all" / "meta_pixel_features.csv"))


def test_merge_refuses_mixed_settings_and_conflicting_duplicates(tmp_path, dicom_dir, capsys):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    for path, size, value in ((a, 32, 1), (b, 64, 2)):
        w = CacheWriter(path, CacheSettings(size=size))
        w.write("x", np.full((size, size), value, np.uint8), (100, 100))
        w.finish()
    assert main(["merge-cache", "--out", str(tmp_path / "m.h5"), str(a), str(b)]) == 2
    assert "cannot merge" in capsys.readouterr().err
    c = tmp_path / "c.h5"
    w = CacheWriter(c, CacheSettings(size=32))
    w.write("x", np.full((32, 32), 9, np.uint8), (100, 100))
    w.finish()
    assert main(["merge-cache", "--out", str(tmp_path / "m.h5"), str(a), str(c)]) == 2
    assert "different pixels" in capsys.readouterr().err
    assert not (tmp_path / "m.h5").exists() and not partial_path(tmp_path / "m.h5").exists()
    assert main(["merge-cache", "--out", str(tmp_path / "m.h5"), str(a), str(a)]) == 0  # same content
    assert CacheReader(tmp_path / "m.h5").ids == ["x"]


def test_usage_errors_exit_2(tmp_path, capsys):
    assert _prepare(tmp_path / "nope", tmp_path) == 2
    (tmp_path / "empty").mkdir()
    assert _prepare(tmp_path / "empty", tmp_path) == 2
    assert _prepare(tmp_path / "empty", tmp_path, "--shard", "2/2") == 2
    err = capsys.readouterr().err
    assert "not a folder" in err and "no .dicom or .dcm files" in err and "0 <= I < N" in err
    assert "Traceback" not in err


def test_parse_shard_and_duplicate_ids(tmp_path, dicom_dir):
    assert parse_shard(None) == (0, 1) and parse_shard("3/4") == (3, 4)
    with pytest.raises(UserError):
        parse_shard("a/b")
    src = tmp_path / "dup"
    files = write_good_set(src)
    (src / "m2_12_cr.dcm").write_bytes(files["m2_12_cr"].read_bytes())
    failures = FailureLog()
    assert prepare_mod.list_dicoms(src, (0, 1), failures)[0].name == "m1_12_implicit.dicom"
    assert [item for item, _ in failures.rows] == ["m2_12_cr.dicom"]
    assert "duplicate image id" in failures.rows[0][1]


def test_cache_matches_direct_pipeline_call(tmp_path, dicom_dir):
    from cxrdet.preprocess.pipeline import preprocess_file

    assert _prepare(dicom_dir, tmp_path, "--workers", "1") == 0
    with h5py.File(tmp_path / "c.h5", "r") as f:
        cached = f["images/m1_14_j2k"][()]
    direct = preprocess_file(dicom_dir / "m1_14_j2k.dicom", CacheSettings(size=32))
    np.testing.assert_array_equal(cached, direct.image)


@pytest.mark.parametrize("command", ["prepare", "merge-cache"])
def test_help_documents_every_flag(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    flags = ["--out", "--meta-out"] + (["--dicom-dir", "--size", "--voi", "--workers", "--shard",
                                         "--errors-out", "--features-out", "--exact-j2k"]
                                        if command == "prepare" else [])
    assert all(flag in out for flag in flags)
