"""``cxrdet prepare`` / ``merge-cache`` end to end on tiny DICOM folders."""

import csv
import hashlib
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
from dicom_fixtures import phantom, write_bad_files, write_good_set, write_malformed_lut_files

import cxrdet.preprocess.pipeline as pipeline_mod
import cxrdet.preprocess.prepare as prepare_mod
from cxrdet.boxes import resized_hw
from cxrdet.cli import main
from cxrdet.dicomio.meta import META_COLUMNS
from cxrdet.dicomio.write import write_dicom
from cxrdet.errors import UserError
from cxrdet.formats.failures import FailureLog
from cxrdet.preprocess.cache import CacheReader, CacheSettings, CacheWriter, partial_path
from cxrdet.preprocess.listing import list_dicoms, parse_shard
from cxrdet.preprocess.prepare import run_prepare


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dicoms")
    write_good_set(folder)
    return folder


def _prepare(src, out_dir, *extra):
    out_dir.mkdir(parents=True, exist_ok=True)
    return main(["prepare", "--dicom-dir", str(src), "--out", str(out_dir / "c.h5"),
                 "--meta-out", str(out_dir / "meta.csv"), "--size", "32", *extra])


def _errors(path):
    return {row["item"]: row["reason"] for row in csv.DictReader(open(path))}


def _images(path):
    r = CacheReader(path)
    return {i: r.read(i) for i in r.ids}


def test_bad_files_are_listed_good_ones_written_exit_3(tmp_path, dicom_dir, capsys):
    src = tmp_path / "mixed"
    write_good_set(src)
    bad = write_bad_files(src)
    assert _prepare(src, tmp_path / "o", "--workers", "2") == 3
    errors = {row["item"]: row["reason"] for row in csv.DictReader(open(tmp_path / "o" / "c.errors.csv"))}
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


def test_malformed_tags_and_unexpected_errors_fail_their_file_only(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_good_set(src)
    bad = write_malformed_lut_files(src)  # these raised TypeError / IndexError and killed runs
    real = pipeline_mod.preprocess_file

    def bug_on_one_file(path, settings):
        if path.name == "m2_12_cr.dicom":
            raise RuntimeError("some decoder bug")  # not a BadDicomError: still only this file
        return real(path, settings)

    monkeypatch.setattr(pipeline_mod, "preprocess_file", bug_on_one_file)
    assert _prepare(src, tmp_path / "o", "--workers", "1") == 3
    errors = _errors(tmp_path / "o" / "c.errors.csv")
    assert set(errors) == {*bad, "m2_12_cr.dicom"}
    assert all(reason in errors[name] for name, reason in bad.items())
    assert "unexpected error" in errors["m2_12_cr.dicom"] and "RuntimeError" in errors["m2_12_cr.dicom"]
    assert len(CacheReader(tmp_path / "o" / "c.h5")) == 5  # every good image written


def _fingerprint(path):
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def _hold_open(path):
    """A process reading the cache, as training does; returns once the file is open."""
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys; f = h5py.File(sys.argv[1], 'r'); "
                               "print('open', flush=True); sys.stdin.read()", str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"
    return holder


def test_rerun_keeps_a_finished_cache_untouched_until_a_new_image_decodes(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "o" / "c.h5"
    write_good_set(src)
    write_bad_files(src / "tmp")
    (src / "tmp" / "truncated.dicom").rename(src / "truncated.dicom")
    assert _prepare(src, out.parent, "--workers", "1") == 3
    before = _fingerprint(out)
    holder = _hold_open(out)
    try:
        # only the bad file is "missing" from the cache: retried, listed, cache not reopened
        assert _prepare(src, out.parent, "--workers", "1") == 3
        assert _fingerprint(out) == before and not partial_path(out).exists()
        assert set(_errors(out.parent / "c.errors.csv")) == {"truncated.dicom"}
        # a new good image needs the cache reopened: refused while it is open elsewhere
        write_dicom(src / "new.dicom", phantom(seed=9))
        capsys.readouterr()
        assert _prepare(src, out.parent, "--workers", "1") == 2
        assert "open in another process" in capsys.readouterr().err
        assert _fingerprint(out) == before and not partial_path(out).exists()
    finally:
        holder.communicate("", timeout=30)
    assert _prepare(src, out.parent, "--workers", "1") == 3
    assert "new" in CacheReader(out) and len(CacheReader(out)) == 7


@pytest.mark.parametrize("flag,target,message", [
    ("--meta-out", "folder", "--meta-out {p} is a folder"),
    ("--errors-out", "folder", "--errors-out {p} is a folder"),
    ("--out", "under_file", "is a file, not a folder"),
])
def test_bad_output_paths_stop_before_any_decoding(tmp_path, dicom_dir, monkeypatch, capsys,
                                                   flag, target, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain").write_text("a regular file")
    path = tmp_path / "folder" if target == "folder" else tmp_path / "plain" / "c.h5"
    decoded = []
    monkeypatch.setattr(pipeline_mod, "preprocess_file", lambda *a: decoded.append(a))
    args = {"--out": tmp_path / "c.h5", "--meta-out": tmp_path / "meta.csv", flag: path}
    argv = ["prepare", "--dicom-dir", str(dicom_dir), "--workers", "1", "--size", "32"]
    code = main(argv + [str(x) for kv in args.items() for x in kv])
    err = capsys.readouterr().err
    assert code == 2 and message.format(p=path) in err and "Traceback" not in err
    assert decoded == [] and not (tmp_path / "c.h5").exists() and not partial_path(tmp_path / "c.h5").exists()


def test_merge_checks_its_output_paths_before_copying(tmp_path, capsys):
    shard = tmp_path / "s.h5"
    w = CacheWriter(shard, CacheSettings(size=32))
    w.write("x", np.full((32, 32), 1, np.uint8), (100, 100))
    w.finish()
    (tmp_path / "meta").mkdir()
    assert main(["merge-cache", "--out", str(tmp_path / "m.h5"), "--meta-out", str(tmp_path / "meta"),
                 str(shard)]) == 2
    assert "--meta-out" in capsys.readouterr().err and not (tmp_path / "m.h5").exists()
    assert main(["merge-cache", "--out", str(tmp_path / "m.h5"), "--meta-out", str(tmp_path / "m.csv"),
                 "--features-out", str(tmp_path / "m.csv"), str(shard)]) == 2
    assert "both point at" in capsys.readouterr().err


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
    # reduced and exact JPEG 2000 decodes never mix in one cache
    assert _prepare(dicom_dir, tmp_path, "--workers", "1", "--exact-j2k") == 2
    err = capsys.readouterr().err
    assert "'j2k_reduce': True" in err and "'j2k_reduce': False" in err
    assert "`--size 32 --voi auto`" in err and "Traceback" not in err
    assert CacheReader(tmp_path / "c.h5").settings.j2k_reduce is True


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
    exact = tmp_path / "exact.h5"
    w = CacheWriter(exact, CacheSettings(size=32, j2k_reduce=False))
    w.write("y", np.full((32, 32), 3, np.uint8), (100, 100))
    w.finish()
    assert main(["merge-cache", "--out", str(tmp_path / "m.h5"), str(a), str(exact)]) == 2
    err = capsys.readouterr().err
    assert "cannot merge" in err and "'j2k_reduce': False" in err and "--exact-j2k" in err
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
    assert list_dicoms(src, (0, 1), failures)[0].name == "m1_12_implicit.dicom"
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


def test_bad_cache_size_names_the_value_then_the_flags(tmp_path, capsys):
    from cxrdet.cli import main as cli_main

    argv = ["prepare", "--dicom-dir", str(tmp_path), "--out", str(tmp_path / "c.h5"), "--meta-out",
            str(tmp_path / "m.csv"), "--size", "8"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "cxrdet prepare: error: cache size must be between 16 and 8192 pixels" in err
    assert "got 8 (flags --size, --voi)" in err and not (tmp_path / "c.h5").exists()
