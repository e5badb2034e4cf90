"""cxrdet.formats.atomic: a file appears complete under its final name, or the old one stays."""

from __future__ import annotations

import json
import math
import stat

import numpy as np
import pandas as pd
import pytest

from cxrdet.formats import atomic


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_writer_that_fails_midway_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("old contents\n")

    def rows():
        yield ["a", 1]
        raise RuntimeError("disk full, say")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic.write_csv(path, ["id", "n"], rows())
    assert path.read_text() == "old contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_atomic_path_keeps_suffix_and_cleans_up_on_error(tmp_path):
    path = tmp_path / "sub" / "plot.png"
    with atomic.atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".png" and tmp != path
        tmp.write_bytes(b"png")
    assert path.read_bytes() == b"png"
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"png"
    assert [p.name for p in path.parent.iterdir()] == ["plot.png"]


def test_files_are_0644_not_mkstemps_0600(tmp_path):
    for path in (atomic.write_text(tmp_path / "a.txt", "x"),
                 atomic.write_json(tmp_path / "b.json", {"a": 1}),
                 atomic.write_frame(tmp_path / "c.csv", pd.DataFrame({"a": [1]}))):
        assert _mode(path) == 0o644, path


def test_json_nan_and_inf_become_null_and_numpy_becomes_python(tmp_path):
    obj = {"auc": math.nan, "inf": -math.inf, 3: np.float32(0.5), "n": np.int64(7),
           "v": np.array([1.0, np.nan]), "t": (np.bool_(True), None)}
    assert atomic.json_ready(obj) == {"auc": None, "inf": None, "3": 0.5, "n": 7,
                                      "v": [1.0, None], "t": [True, None]}
    path = atomic.write_json(tmp_path / "r.json", obj)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text and text.endswith("\n")
    assert json.loads(text)["v"] == [1.0, None]


def test_csv_bytes_and_line_ends(tmp_path):
    crlf = atomic.write_csv(tmp_path / "a.csv", ["x", "y"], [["1", "a,b"]])
    assert crlf.read_bytes() == b'x,y\r\n1,"a,b"\r\n'
    lf = atomic.write_csv(tmp_path / "b.csv", ["x"], [["1"]], lineterminator="\n")
    assert lf.read_bytes() == b"x\n1\n"
    frame = atomic.write_frame(tmp_path / "c.csv", pd.DataFrame({"p": [0.123456789]}), float_format="%.3g")
    assert frame.read_text() == "p\n0.123\n"
