"""`cxrdet merge-submissions`: shard files combine into exactly the unsharded file; overlaps,
malformed rows and missing shards are refused without writing anything."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdet.cli import main as cli
from cxrdet.detections import Detections
from cxrdet.formats.image_level import image_level_frame, image_level_row, write_image_level
from cxrdet.inference.sources import select_shard
from cxrdet.formats.submission import write_submission

IDS = [f"img{i:02d}" for i in range(7)]
SIZES = {k: (400 + 10 * i, 300) for i, k in enumerate(IDS)}


def _preds(ids):
    out = {}
    for i, k in enumerate(ids):
        n = i % 3  # 0, 1 or 2 boxes, so empty strings are merged too
        out[k] = Detections(np.tile([[10.5, 20.25, 100, 200]], (n, 1)), np.linspace(0.9, 0.3, n), np.arange(n))
    return out


def _write_shards(tmp_path, n):
    preds = _preds(IDS)
    subs, ils = [], []
    for i in range(n):
        ids = select_shard(IDS, i, n)
        sub = write_submission(tmp_path / f"sub_{i}.csv", {k: preds[k] for k in ids}, ids, SIZES)
        il = write_image_level(tmp_path / f"il_{i}.csv",
                               image_level_frame([image_level_row(k, preds[k], 0.5) for k in ids]))
        subs.append(str(sub))
        ils.append(str(il))
    return preds, subs, ils


def test_merged_shards_equal_the_unsharded_files_byte_for_byte(tmp_path):
    preds, subs, ils = _write_shards(tmp_path, 3)
    whole = write_submission(tmp_path / "whole.csv", preds, IDS, SIZES)
    whole_il = write_image_level(tmp_path / "whole_il.csv",
                                 image_level_frame([image_level_row(k, preds[k], 0.5) for k in IDS]))
    rc = cli(["merge-submissions", "--out", str(tmp_path / "all.csv"), *subs[::-1],
              "--image-level", *ils, "--image-level-out", str(tmp_path / "all_il.csv"), "--expect", "7"])
    assert rc == 0
    assert (tmp_path / "all.csv").read_bytes() == whole.read_bytes()
    assert (tmp_path / "all_il.csv").read_bytes() == whole_il.read_bytes()


def test_overlapping_shards_are_refused_and_nothing_is_written(tmp_path, capsys):
    _, subs, _ = _write_shards(tmp_path, 2)
    rc = cli(["merge-submissions", "--out", str(tmp_path / "all.csv"), subs[0], subs[1], subs[0]])
    assert rc == 2
    assert "also in" in capsys.readouterr().err
    assert not (tmp_path / "all.csv").exists()


def test_missing_shard_and_malformed_rows_are_refused(tmp_path, capsys):
    _, subs, _ = _write_shards(tmp_path, 2)
    assert cli(["merge-submissions", "--out", str(tmp_path / "a.csv"), subs[0], "--expect", "7"]) == 2
    assert "missing" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,PredictionString\nx1,3 0.5 10 10 5 20\n")
    assert cli(["merge-submissions", "--out", str(tmp_path / "b.csv"), subs[0], str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.csv line 2" in err and "x_max" in err
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "b.csv").exists()


def test_shard_errors_are_merged_once_each_and_exit_3(tmp_path, capsys):
    _, subs, _ = _write_shards(tmp_path, 2)
    errs = []
    for i, rows in enumerate([["img09,cannot read it", "dup.dicom,image id dup twice"],
                              ["dup.dicom,image id dup twice"]]):
        errs.append(tmp_path / f"sub_{i}.errors.csv")
        errs[-1].write_text("item,reason\n" + "\n".join(rows) + "\n")
    out_err = tmp_path / "all.errors.csv"
    rc = cli(["merge-submissions", "--out", str(tmp_path / "all.csv"), *subs,
              "--errors", *map(str, errs), "--errors-out", str(out_err)])
    assert rc == 3
    assert out_err.read_text().splitlines() == ["item,reason", "img09,cannot read it", "dup.dicom,image id dup twice"]
    assert "img09" in capsys.readouterr().err
    # clean shards: an errors CSV with the header only, exit 0
    for e in errs:
        e.write_text("item,reason\n")
    assert cli(["merge-submissions", "--out", str(tmp_path / "all.csv"), *subs,
                "--errors", *map(str, errs), "--errors-out", str(out_err)]) == 0
    assert out_err.read_text().splitlines() == ["item,reason"]
    bad = tmp_path / "bad.errors.csv"
    bad.write_text("image_id,PredictionString\n")
    assert cli(["merge-submissions", "--out", str(tmp_path / "x.csv"), *subs, "--errors", str(bad),
                "--errors-out", str(out_err)]) == 2
    assert "expected the header item,reason" in capsys.readouterr().err


def test_provenance_records_are_merged_and_a_missing_one_means_none(tmp_path, capsys):
    from cxrdet.formats.provenance import provenance_path, read_provenance, write_provenance

    _, subs, _ = _write_shards(tmp_path, 2)
    for i, sub in enumerate(subs):
        ids = select_shard(IDS, i, 2)
        write_provenance(sub, [{"models": [{"artifact": f"/runs/f{i}/export", "folds": "/F.csv", "fold": i}],
                                "folds": "/F.csv", "fold": i, "shard": None, "tta": "none", "image_ids": ids}])
    out = tmp_path / "all.csv"
    assert cli(["merge-submissions", "--out", str(out), *subs]) == 0
    runs = read_provenance(provenance_path(out))
    assert [r["models"][0]["fold"] for r in runs] == [0, 1]
    assert sorted(sum((r["image_ids"] for r in runs), [])) == IDS
    provenance_path(subs[1]).unlink()
    assert cli(["merge-submissions", "--out", str(out), *subs]) == 0
    assert not provenance_path(out).exists()  # the old merged record went with the old CSV
    assert "no provenance record" in capsys.readouterr().err
