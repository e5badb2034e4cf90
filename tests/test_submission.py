"""Submission CSV: formatting, strict parsing with line numbers, atomic writing."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from cxrdet.detections import DET_COLUMNS, Detections
from cxrdet.errors import UserError
from cxrdet.formats.submission import (
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


def reference_format(dets: Detections, decimals: int = 4) -> str:
    """The per-value formatter the vectorized one replaced: the golden reference for its text."""
    def fmt(x):
        s = f"{x:.{decimals}f}"
        if "." in s:
            s = s.rstrip("0").rstrip(".")
        return "0" if s in ("-0", "") else s

    dets = dets.sorted()
    parts = []
    for c, p, box in zip(dets.class_ids.tolist(), dets.scores.tolist(), dets.boxes.tolist()):
        coords = "0 0 1 1" if c == 14 else " ".join(fmt(v) for v in box)
        parts.append(f"{c} {fmt(p)} {coords}")
    return " ".join(parts)


def random_detections(rng, n):
    """Boxes with the awkward values: halves at the rounding step, -0, tiny, huge, ties, class 14."""
    boxes = rng.uniform(-50, 3000, (n, 4)) * rng.choice([1, 1e-6, 1e9], (n, 4), p=[0.9, 0.05, 0.05])
    awkward = np.array([0.00005, 1.23445, 2.5, 0.5, -0.00001, 1023.99996, 5.00004, 0.125, 1e-5, 0.0])
    pick = rng.random((n, 4)) < 0.2
    boxes[pick] = rng.choice(awkward, pick.sum())
    scores = rng.choice(np.r_[rng.random(n), awkward[(awkward >= 0) & (awkward <= 1)], 1.0], n)
    return Detections(boxes, scores, rng.integers(0, 15, n))


@pytest.mark.parametrize("decimals", [0, 1, 4, 8])
def test_vectorized_format_matches_the_per_value_reference(decimals):
    rng = np.random.default_rng(decimals)
    for n in [1, 2, 7, 300]:
        for _ in range(5):
            d = random_detections(rng, n)
            assert format_prediction_string(d, decimals) == reference_format(d, decimals)
    assert "-" not in format_prediction_string(det([[-0.00001, 0, 1, 1]], [0.5], [0]))


def test_writer_rounds_before_the_keep_test(tmp_path):
    path = tmp_path / "s.csv"
    preds = {"a": det([[1023.99996, 0, 1030, 10], [5, 0, 5.00004, 10], [5, 0, 5.00006, 10],
                       [1, 2, 3, 4]], [0.9, 0.8, 0.7, 0.6], [0, 1, 2, 3])}
    with pytest.warns(UserWarning, match="2 box"):
        write_submission(path, preds, ["a"], {"a": (100, 1024)})
    assert path.read_text().splitlines()[1] == "a,2 0.7 5 0 5.0001 10 3 0.6 1 2 3 4"
    assert len(read_submission(path)) == 2


def test_writer_checks_classes_and_boxes_without_sizes(tmp_path):
    path = tmp_path / "s.csv"
    with pytest.raises(ValueError, match=r"image 'a': class_id\(s\) \[27\]"):
        write_submission(path, {"a": det([[1, 1, 5, 5]], [0.5], [27])}, ["a"])
    with pytest.raises(ValueError, match=r"image 'a': confidences .* found \[nan\]"):
        write_submission(path, {"a": det([[1, 1, 5, 5]], [np.nan], [0])}, ["a"])
    assert not path.exists()
    with pytest.warns(UserWarning, match="1 box"):  # inverted: dropped, not written unreadable
        write_submission(path, {"a": det([[9, 1, 5, 5], [1, 1, 5, 5]], [0.5, 0.4], [0, 1])}, ["a"])
    assert path.read_text().splitlines()[1] == "a,1 0.4 1 1 5 5"


@pytest.mark.parametrize("with_sizes", [True, False])
def test_write_then_read_always_roundtrips(tmp_path, with_sizes):
    rng = np.random.default_rng(7)
    ids = [f"img{i}" for i in range(40)]
    sizes = {k: (int(rng.integers(1, 3000)), int(rng.integers(1, 3000))) for k in ids}
    preds = {}
    for k in ids[:-3]:  # the last three have no predictions: filled as normal
        d = random_detections(rng, int(rng.integers(0, 60)))
        thin = rng.random(len(d)) < 0.3  # boxes thinner than the rounding step, or inverted
        d.boxes[thin, 2] = d.boxes[thin, 0] + rng.choice([4e-5, 6e-5, -1.0, 0.0], thin.sum())
        preds[k] = d
    path = tmp_path / "s.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        write_submission(path, preds, ids, sizes if with_sizes else None, missing="normal")
    frame, read_ids = read_submission(path, with_ids=True)
    assert read_ids == ids
    if with_sizes:
        w = frame.image_id.map(lambda k: sizes[k][1]).to_numpy()
        assert (frame.x_max.to_numpy() <= w).all() and (frame.x_min >= 0).all()
