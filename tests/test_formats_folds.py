"""FOLDS.csv: the one reader (cxrdet.formats.folds) and the commands that use it."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cxrdet.errors import UserError
from cxrdet.formats.folds import fold_members, read_folds, write_folds
from cxrdet.gate.inputs import read_fold_column, validation_ids
from cxrdet.inference.infer import fold_ids


def write(tmp_path, text: str):
    path = tmp_path / "FOLDS.csv"
    path.write_text(text)
    return path


def test_good_file_in_file_order_with_spaces_and_blank_lines(tmp_path):
    path = write(tmp_path, "image_id,fold\n b ,1\n\na,0\n , \nc, 1\n")
    assert read_folds(path) == {"b": 1, "a": 0, "c": 1}
    assert list(read_folds(path)) == ["b", "a", "c"]
    assert fold_members(read_folds(path), 1) == ["b", "c"]
    assert fold_members(read_folds(path), 2) == []


def test_write_then_read_round_trip(tmp_path):
    folds = {"x": 2, "y": 0, "z": np.int64(1)}
    path = write_folds(tmp_path / "sub" / "FOLDS.csv", folds)
    assert path.read_text().splitlines() == ["image_id,fold", "x,2", "y,0", "z,1"]
    assert read_folds(path) == {"x": 2, "y": 0, "z": 1}


@pytest.mark.parametrize("body, line, says", [
    ("a,0\nb,x\n", 3, "fold 'x' is not an integer"),
    ("a,0\nb,1.5\n", 3, "fold '1.5' is not an integer"),
    ("a,-1\n", 2, "fold -1 is negative"),
    ("a,0\n,1\n", 3, "empty image_id"),
    ("a,0\nb,1,extra\n", 3, "expected 2 fields, found 3"),
    ("a,0\nb,1\na,1\n", 4, "image_id 'a' is listed again (first on line 2)"),
    # blank lines count: the bad row is on physical line 5
    ("a,0\n\n\nb,y\n", 5, "fold 'y' is not an integer"),
])
def test_bad_row_names_file_and_line(tmp_path, body, line, says):
    path = write(tmp_path, "image_id,fold\n" + body)
    with pytest.raises(UserError) as e:
        read_folds(path)
    msg = str(e.value)
    assert f"{path}:{line}: {says}" in msg
    assert "cxrdet split" in msg  # the fix


def test_quoted_field_keeps_line_numbers_and_a_stray_quote_names_its_line(tmp_path):
    # a quoted id holding a comma is one field; the bad fold below it is on line 3
    path = write(tmp_path, 'image_id,fold\n"a,b",0\nc,z\n')
    with pytest.raises(UserError) as e:
        read_folds(path)
    assert f"{path}:3: fold 'z' is not an integer" in str(e.value)
    # a quote left open would swallow the next lines into one id: refused, naming where it opened
    path = write(tmp_path, 'image_id,fold\n"a\nb",0\nc,1\n')
    with pytest.raises(UserError) as e:
        read_folds(path)
    assert f"{path}:2: a quote (\") opened on this line is not closed before the line ends" in str(e.value)


def test_every_bad_row_is_counted(tmp_path):
    path = write(tmp_path, "image_id,fold\n" + "".join(f"i{k},x\n" for k in range(12)))
    with pytest.raises(UserError) as e:
        read_folds(path)
    msg = str(e.value)
    assert msg.startswith("12 bad row(s)") and "(and 2 more)" in msg
    assert len(re.findall(r"FOLDS\.csv:\d+:", msg)) == 10


@pytest.mark.parametrize("text, says", [
    ("id,fold\na,0\n", "expected the header image_id,fold, found id,fold"),
    ("", "expected the header image_id,fold, found nothing"),
    ("image_id,fold\n\n", "lists no image"),
])
def test_header_and_empty_file(tmp_path, text, says):
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=re.escape(says)):
        read_folds(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_folds(tmp_path / "nope.csv")


def test_gate_fold_column_uses_the_checked_reader(tmp_path):
    path = write(tmp_path, "image_id,fold\na,0\nb,1\nc,1\n")
    assert read_fold_column(path, ["c", "a"]).tolist() == [1, 0]
    with pytest.raises(UserError, match="1 labelled image"):
        read_fold_column(path, ["a", "d"])
    # the old reader dropped non-integer folds silently; now the line is named
    bad = write(tmp_path, "image_id,fold\na,0\nb,one\n")
    with pytest.raises(UserError, match=r"FOLDS\.csv:3: fold 'one'"):
        read_fold_column(bad, ["a", "b"])


def test_validation_ids_names_where_the_file_came_from(tmp_path):
    path = write(tmp_path, "image_id,fold\na,0\nb,1\nc,1\n")
    assert validation_ids(path, 1, "the folds file of run R") == {"b", "c"}
    path.write_text("image_id,fold\na,0\na,1\n")
    with pytest.raises(UserError, match=r"^the folds file of run R: .*FOLDS\.csv:3: image_id 'a' is listed again"):
        validation_ids(path, 1, "the folds file of run R")


def test_infer_fold_ids_checks_the_file(tmp_path):
    path = write(tmp_path, "image_id,fold\nb,1\na,1\nc,0\n")
    assert fold_ids(str(path), 1, ["a", "b", "c"]) == ["a", "b"]
    with pytest.raises(UserError, match=r"no image in fold 3 \(folds present: \[0, 1\]\)"):
        fold_ids(str(path), 3, ["a", "b", "c"])
    path.write_text("image_id,fold\na,1.0\n")  # pandas read this as fold 1 before
    with pytest.raises(UserError, match="not an integer"):
        fold_ids(str(path), 1, ["a"])
