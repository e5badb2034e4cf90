"""Submission CSV: formatting, strict parsing with line numbers, atomic writing."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cxrdet.detections import DET_COLUMNS, Detections
from cxrdet.errors import UserError
from cxrdet.submission import (
    PredictionStringError, format_prediction_string, parse_prediction_string, read_submission,
    write_submission,
)


def det(boxes, scores, classes):
    return Detections(np.array(boxes, dtype=float), np.array(scores, dtype=float), np.array(classes))


def test_format_sorts_by_confidence_and_writes_class_14_exactly():
    d = det([[1.23456, 2, 30.5, 40], [5, 5, 900, 900], [3, 3, 9, 9]], [0.5, 1.0, 0.25], [3, 14, 8])
    assert format_prediction_string(d) == "14 1 0 0 1 1 3 0.5 1.2346 2 30.5 40 8 0.25 3 3 9 9"
    assert format_prediction_string(d, decimals=1) == "14 1 0 0 1 1 3 0.5 1.2 2 30.5 40 8 0.2 3 3 9 9"
    assert format_prediction_string(Detections.empty()) == ""


def test_parse_roundtrip():
    d = det([[1.5, 2, 30.5, 40], [0, 0, 1, 1]], [0.75, 0.125], [3, 14])
    back = parse_prediction_string(format_prediction_string(d))
    np.testing.assert_allclose(back.boxes, d.boxes)
    np.testing.assert_allclose(back.scores, d.scores)
    assert back.class_ids.tolist() == [3, 14]
    assert len(parse_prediction_string("")) == 0 and len(parse_prediction_string(float("nan"))) == 0


@pytest.mark.parametrize("s, message", [
    ("3 0.5 1 2 3", "5 tokens is not a multiple of 6"),
    ("3 0.5 1 2 3 4 5", "7 tokens"),
    ("3 nan 1 2 3 4", "NaN or infinite"),
    ("3 0.5 1 2 inf 4", "NaN or infinite"),
    ("15 0.5 1 2 3 4", "class_id 15 is not an integer"),
    ("2.5 0.5 1 2 3 4", "class_id 2.5 is not an integer"),
    ("-1 0.5 1 2 3 4", "class_id -1"),
    ("3 1.01 1 2 3 4", "confidence 1.01 is outside [0, 1]"),
    ("3 -0.1 1 2 3 4", "confidence -0.1"),
    ("3 0.5 3 2 3 4", "x_max 3 <= x_min 3"),
    ("3 0.5 1 4 3 4", "y_max 4 <= y_min 4"),
    ("3 0.5 1 2 3 four", "token 'four' is not a number"),
])
def test_parse_rejects_malformed(s, message):
    with pytest.raises(PredictionStringError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_prediction_string(s, where="sub.csv:7")
    with pytest.raises(ValueError, match="^sub.csv:7: "):
        parse_prediction_string(s, where="sub.csv:7")


def test_write_read_roundtrip_with_clipping(tmp_path):
    path = tmp_path / "out" / "submission.csv"
    preds = {
        "img_b": det([[-5, 10, 120, 50], [0, 0, 1, 1], [200, 200, 300, 300]], [0.9, 0.3, 0.5], [2, 14, 4]),
        "img_a": Detections.empty(),
    }
    with pytest.warns(UserWarning, match="1 box"):
        write_submission(path, preds, ["img_a", "img_b"], {"img_a": (100, 100), "img_b": (64, 100)})
    lines = path.read_text().splitlines()
    assert lines == ["image_id,PredictionString", "img_a,", "img_b,2 0.9 0 10 100 50 14 0.3 0 0 1 1"]
    frame, ids = read_submission(path, with_ids=True)
    assert ids == ["img_a", "img_b"] and list(frame.columns) == DET_COLUMNS
    assert frame.class_id.tolist() == [2, 14] and frame.x_max.tolist() == [100.0, 1.0]
    assert not [f for f in os.listdir(path.parent) if f.endswith(".tmp")]


def test_write_every_image_once_or_explicit_fill(tmp_path):
    path = tmp_path / "s.csv"
    d = {"a": det([[1, 1, 5, 5]], [0.5], [0])}
    with pytest.raises(UserError, match="1 image"):
        write_submission(path, d, ["a", "b"])
    assert not path.exists()
    write_submission(path, d, ["a", "b"], missing="normal")
    assert path.read_text().splitlines()[2] == "b,14 1 0 0 1 1"
    write_submission(path, d, ["a", "b"], missing="empty")
    assert path.read_text().splitlines()[2] == "b,"
    with pytest.raises(UserError, match="more than once"):
        write_submission(path, d, ["a", "a"])
    with pytest.raises(UserError, match="not in the image list"):
        write_submission(path, d, ["b"], missing="normal")
    with pytest.raises(UserError, match="no original size"):
        write_submission(path, d, ["a"], {"zz": (5, 5)})
    with pytest.raises(ValueError, match="confidences"):
        write_submission(path, {"a": det([[1, 1, 5, 5]], [1.5], [0])}, ["a"])


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "s.csv"
    write_submission(path, {"a": det([[1, 1, 5, 5]], [0.5], [0])}, ["a"])
    before = path.read_text()
    with pytest.raises(ValueError):
        write_submission(path, {"a": det([[np.nan, 1, 5, 5]], [0.5], [0])}, ["a"])
    assert path.read_text() == before


def test_read_reports_every_malformed_row_with_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "image_id,PredictionString\n"
        "a,14 1 0 0 1 1\n"          # 2 ok
        "b,1 0.5 0 0 1\n"           # 3 token count
        "c,1 1.5 0 0 1 1\n"         # 4 confidence
        "a,14 1 0 0 1 1\n"          # 5 duplicate
        "d,3 0.5 5 0 1 1\n"         # 6 x_max <= x_min
        "e,16 .3 0 0 1 1\n"         # 7 class
        "f,1 nan 0 0 1 1\n"         # 8 NaN
        "g,1,2\n"                    # 9 fields
        ",1 0.5 0 0 1 1\n"          # 10 empty id
        "h,\n"                       # 11 ok: no detections
    )
    with pytest.raises(UserError) as e:
        read_submission(path)
    msg = str(e.value)
    assert "8 bad row(s)" in msg
    for line, text in [(3, "not a multiple of 6"), (4, "confidence 1.5"), (5, "repeats line 2"),
                       (6, "x_max 1 <= x_min 5"), (7, "class_id 16"), (8, "NaN"),
                       (9, "expected 2 fields"), (10, "empty image_id")]:
        assert f"{path}:{line}: " in msg and text in msg
    assert f"{path}:2: " not in msg and f"{path}:11: " not in msg


@pytest.mark.parametrize("header", ["image_id,PredictionStrings\n", "id,PredictionString\n", ""])
def test_read_rejects_bad_header(tmp_path, header):
    path = tmp_path / "s.csv"
    path.write_text(header + "a,14 1 0 0 1 1\n" if header else "")
    with pytest.raises(UserError, match=":1: header"):
        read_submission(path)


def test_read_reports_bad_tokens_and_other_rows_together(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("image_id,PredictionString\na,3 0.5 1 2 x 4\nb,3 7 1 2 3 4\nc,14 1 0 0 1 1\n")
    with pytest.raises(UserError) as e:
        read_submission(path)
    msg = str(e.value)
    assert "2 bad row(s)" in msg and f"{path}:2: token 'x' is not a number" in msg
    assert f"{path}:3: box 1 (3 7 1 2 3 4): confidence 7 is outside [0, 1]" in msg


def test_read_names_the_bad_box_within_its_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("image_id,PredictionString\na,14 1 0 0 1 1\nb,3 0.5 1 2 3 4 3 0.5 5 2 3 4\n")
    with pytest.raises(UserError, match=r"bad.csv:3: box 2 \(3 0.5 5 2 3 4\): x_max 3 <= x_min 5"):
        read_submission(path)
