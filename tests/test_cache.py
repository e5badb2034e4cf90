"""HDF5 cache: layout, settings refusal, atomic finish, resume, corrupt partials, fork safety."""

import multiprocessing as mp
import pickle
import subprocess
import sys

import h5py
import numpy as np
import pytest

from cxrdet.errors import UserError
from cxrdet.preprocess.cache import (FORMAT_VERSION, CacheReader, CacheSettings, CacheWriter,
                                     partial_path)

S = CacheSettings(size=32, voi="auto")


def _img(value, hw=(32, 24)):
    return np.full(hw, value, dtype=np.uint8)


def _write(path, ids, settings=S, finish=True):
    w = CacheWriter(path, settings)
    for i, image_id in enumerate(ids):
        w.write(image_id, _img(i), (64 + i, 48), {"image_id": image_id}, {"px_mean": float(i)})
    (w.finish if finish else w.close)()
    return w


def test_layout_and_reader_api(tmp_path):
    path = tmp_path / "c.h5"
    _write(path, ["b", "a"])
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == FORMAT_VERSION and bool(f.attrs["complete"])
        assert (f.attrs["size"], f.attrs["voi"]) == (32, "auto")
        ds = f["images/a"]
        assert ds.dtype == np.uint8 and ds.shape == (32, 24)
        assert (ds.attrs["orig_height"], ds.attrs["orig_width"]) == (65, 48)
    r = CacheReader(path, expect=CacheSettings(size=32))
    assert r.ids == ["a", "b"] and len(r) == 2 and "a" in r and "z" not in r
    image, attrs = r.read("b")
    np.testing.assert_array_equal(image, _img(0))
    assert attrs == {"orig_height": 64, "orig_width": 48} and r.orig_hw("a") == (65, 48)
    assert r.cache_hw("a") == (32, 24) and r.settings == S
    assert r.rows("features") == [{"px_mean": 1.0}, {"px_mean": 0.0}]
    with pytest.raises(KeyError, match="not in cache"):
        r.read("z")
    assert not partial_path(path).exists()


def test_reader_refuses_other_settings_and_non_caches(tmp_path):
    path = tmp_path / "c.h5"
    _write(path, ["a"])
    with pytest.raises(UserError, match=r"'size': 32.*'size': 64.*--size 64"):
        CacheReader(path, expect=CacheSettings(size=64))
    with pytest.raises(UserError, match="'voi': 'minmax'"):
        CacheReader(path, expect=CacheSettings(size=32, voi="minmax"))
    CacheReader(path, expect=CacheSettings(size=32, j2k_reduce=False))  # tolerance-level detail
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(UserError, match="not a cxrdet image cache"):
        CacheReader(other)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(UserError, match="not a readable HDF5"):
        CacheReader(tmp_path / "junk.h5")
    with pytest.raises(UserError, match="not found"):
        CacheReader(tmp_path / "missing.h5")


def test_interrupted_writer_never_looks_complete_and_resumes(tmp_path):
    path = tmp_path / "c.h5"
    _write(path, ["a", "b"], finish=False)  # a run killed after two images
    assert not path.exists() and partial_path(path).exists()
    with pytest.raises(UserError, match="incomplete.*rerun"):
        CacheReader(path)
    with h5py.File(partial_path(path), "a") as f:  # a third image cut short mid-write
        f["images"].create_dataset("c", data=_img(9))
    w = CacheWriter(path, S)
    assert w.done == {"a", "b"}  # the unfinished "c" was dropped
    w.write("c", _img(2), (66, 48))
    w.finish()
    r = CacheReader(path, expect=S)
    assert r.ids == ["a", "b", "c"] and r.read("c")[0][0, 0] == 2


def test_resume_refuses_a_partial_with_other_settings(tmp_path):
    path = tmp_path / "c.h5"
    _write(path, ["a"], finish=False)
    with pytest.raises(UserError, match="settings"):
        CacheWriter(path, CacheSettings(size=64))
    assert partial_path(path).exists()  # left for the user to decide


def test_corrupt_partial_is_restarted_with_a_warning(tmp_path):
    path = tmp_path / "c.h5"
    partial_path(path).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)  # torn HDF5 superblock
    with pytest.warns(UserWarning, match="corrupt"):
        w = CacheWriter(path, S)
    assert w.done == set()
    w.write("a", _img(1), (64, 48))
    w.finish()
    assert CacheReader(path).ids == ["a"]


def test_reopening_a_finished_cache_adds_images(tmp_path):
    path = tmp_path / "c.h5"
    _write(path, ["a"])
    w = CacheWriter(path, S)
    assert w.done == {"a"} and not path.exists()  # incomplete again while adding
    w.write("b", _img(5), (64, 48))
    w.finish()
    assert CacheReader(path).ids == ["a", "b"]


def _read_in_child(reader, queue):
    queue.put(int(reader.read("b")[0][0, 0]))


@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # fork is what DataLoader does
def test_reader_reopens_in_forked_and_pickled_processes(tmp_path):
    path = tmp_path / "c.h5"
    _write(path, ["a", "b", "c"])
    reader = CacheReader(path)
    reader.read("a")  # parent handle is open before the fork
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(reader, queue))
    child.start()
    child.join(30)
    assert child.exitcode == 0 and queue.get(timeout=5) == 1
    clone = pickle.loads(pickle.dumps(reader))  # what spawn workers receive
    assert clone._h5 is None and clone.read("c")[0][0, 0] == 2
    assert reader.read("a")[0][0, 0] == 0  # parent handle still fine
    reader.close()
    clone.close()


def test_settings_validation():
    with pytest.raises(UserError, match=r"^cache windowing \(voi\) must be one of .*, got 'gamma'$"):
        CacheSettings(voi="gamma")
    for size in (4, 15, 8193, 100_000):
        with pytest.raises(UserError, match=f"^cache size must be between 16 and 8192 pixels.*got {size}$"):
            CacheSettings(size=size)
    assert CacheSettings(size=16).size == 16 and CacheSettings(size=8192).size == 8192


def test_resume_refuses_another_j2k_decode_mode(tmp_path):
    exact = CacheSettings(size=32, j2k_reduce=False)
    for finish in (False, True):  # an interrupted .partial, then a finished cache
        path = tmp_path / f"c{finish}.h5"
        _write(path, ["a"], finish=finish)  # made with the default reduced decode
        with pytest.raises(UserError, match=r"'j2k_reduce': True.*'j2k_reduce': False.*"
                                            r"`--size 32 --voi auto`.*--exact-j2k"):
            CacheWriter(path, exact)
        assert path.exists() == finish and partial_path(path).exists() != finish  # not renamed
    with h5py.File(tmp_path / "cTrue.h5", "r") as f:
        assert bool(f.attrs["j2k_reduce"]) is True  # recorded in the root attrs
    assert CacheReader(tmp_path / "cTrue.h5").settings.build_identity() == \
        {"size": 32, "voi": "auto", "j2k_reduce": True}


def test_finished_cache_open_elsewhere_is_refused_and_keeps_its_name(tmp_path):
    path = tmp_path / "c.h5"
    _write(path, ["a"])
    before = path.read_bytes()
    reader = subprocess.Popen([sys.executable, "-c", "import h5py, sys; f = h5py.File(sys.argv[1], 'r'); "
                               "print('open', flush=True); sys.stdin.read()", str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"  # e.g. a training run reading it
        with pytest.raises(UserError, match="open in another process"):
            CacheWriter(path, S)
        assert path.read_bytes() == before and not partial_path(path).exists()
    finally:
        reader.communicate("", timeout=30)
    assert CacheWriter(path, S).done == {"a"} and not path.exists()  # free again: reopened


def test_partial_held_by_another_process_is_refused_not_deleted(tmp_path):
    path = tmp_path / "c.h5"
    _write(path, ["a"], finish=False)
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys; f = h5py.File(sys.argv[1], 'a'); "
                               "print('open', flush=True); sys.stdin.read()", str(partial_path(path))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(UserError, match="another process"):
            CacheWriter(path, S)
        assert partial_path(path).exists()
    finally:
        holder.communicate("", timeout=30)
    assert CacheWriter(path, S).done == {"a"}


def test_killed_writer_keeps_its_images(tmp_path):
    path = tmp_path / "c.h5"
    code = ("import sys, os, numpy as np; from cxrdet.preprocess.cache import CacheWriter, CacheSettings; "
            "w = CacheWriter(sys.argv[1], CacheSettings(size=32)); "
            "[w.write(f'i{k}', np.full((32, 24), k, np.uint8), (64, 48)) for k in range(5)]; "
            "os.kill(os.getpid(), 9)")  # SIGKILL: no cleanup at all
    proc = subprocess.run([sys.executable, "-c", code, str(path)], timeout=60)
    assert proc.returncode == -9 and partial_path(path).exists() and not path.exists()
    assert CacheWriter(path, S).done == {f"i{k}" for k in range(5)}
