"""Label CSV reading: every kind of bad row is reported with its CSV line; per-image views."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdet.errors import UserError
from cxrdet.formats.labels import (
    LABEL_COLUMNS, image_level_labels, image_sizes_from_meta, labels_by_image, read_labels,
)

HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
GOOD = (
    "a,No finding,14,R1,,,,\n"
    "a,No finding,14,R2,,,,\n"
    "b,Nodule/Mass,8,R3,10.5,20,30,40\n"
    "b,Cardiomegaly,3,R4,100,200,300,400\n"
)


def write(tmp_path, body, header=HEADER):
    p = tmp_path / "train.csv"
    p.write_text(header + body)
    return p


def error_of(path, **kw):
    with pytest.raises(UserError) as e:
        read_labels(path, **kw)
    return str(e.value)


def test_reads_good_file_with_types(tmp_path):
    df = read_labels(write(tmp_path, GOOD))
    assert list(df.columns) == LABEL_COLUMNS and len(df) == 4
    assert df.class_id.dtype == np.int64 and df.x_min.dtype == np.float64
    assert df.loc[df.class_id == 14, ["x_min", "y_min", "x_max", "y_max"]].isna().all().all()
    assert df.iloc[2][["x_min", "y_min", "x_max", "y_max"]].tolist() == [10.5, 20, 30, 40]


@pytest.mark.parametrize("row, message", [
    ("c,ILD,5,R1,30,1,20,9", "x_min 30 >= x_max 20"),
    ("c,ILD,5,R1,1,9,20,9", "y_min 9 >= y_max 9"),
    ("c,ILD,6,R1,1,2,20,9", "class_name 'ILD' does not match class_id 6"),
    ("c,Foo,15,R1,1,2,20,9", "class_id '15' is not an integer in 0..14"),
    ("c,ILD,five,R1,1,2,20,9", "class_id 'five'"),
    ("c,No finding,14,R1,0,0,1,1", "has coordinates"),
    ("c,ILD,5,R1,,,,", "has empty coordinates"),
    ("c,ILD,5,R1,1,2,NaN,9", "not all finite"),
    ("c,ILD,5,R1,1,2,abc,9", "not all finite"),
    ("c,ILD,5,R1,-1,2,20,9", "negative coordinate"),
    (",ILD,5,R1,1,2,20,9", "empty image_id"),
])
def test_each_bad_row_names_its_line(tmp_path, row, message):
    path = write(tmp_path, GOOD + row + "\n")
    msg = error_of(path)
    assert f"{path}:6: " in msg and message in msg and "1 bad row(s)" in msg


def test_all_bad_rows_collected_first_20_shown(tmp_path):
    body = GOOD + "".join(f"c{i},ILD,5,R1,30,1,20,9\n" for i in range(25))
    msg = error_of(write(tmp_path, body))
    assert "25 bad row(s)" in msg and ":6: " in msg and ":25: " in msg
    assert ":26: " not in msg and "... and 5 more" in msg


def test_missing_column_is_line_1(tmp_path):
    msg = error_of(write(tmp_path, "a,No finding,14,,,,\n", header="image_id,class_name,class_id,x_min,y_min,x_max,y_max\n"))
    assert ":1: missing column(s) ['rad_id']" in msg


def test_empty_and_absent_files(tmp_path):
    assert "no rows" in error_of(write(tmp_path, ""))
    (tmp_path / "e.csv").write_text("")
    assert "empty" in error_of(tmp_path / "e.csv")
    assert "not found" in error_of(tmp_path / "nope.csv")


def test_boxes_outside_known_image_size(tmp_path):
    path = write(tmp_path, GOOD)
    msg = error_of(path, image_sizes={"b": (350, 1000)})  # Cardiomegaly y_max 400 > 350 rows
    assert f"{path}:5: " in msg and "outside the image (height 350, width 1000)" in msg
    assert len(read_labels(path, image_sizes={"b": (400, 300)})) == 4  # touching the edge is fine
    assert len(read_labels(path, image_sizes={"zz": (1, 1)})) == 4  # b's size unknown: unchecked


def test_image_sizes_from_meta(tmp_path):
    meta = tmp_path / "META.csv"
    meta.write_text("image_id,rows,columns,modality\na,2048,1024,DX\nb,10,20,CR\n")
    assert image_sizes_from_meta(meta) == {"a": (2048, 1024), "b": (10, 20)}
    meta.write_text("image_id,rows,columns\na,,1024\n")
    with pytest.raises(UserError, match=r"META.csv:2: "):
        image_sizes_from_meta(meta)


def test_image_level_labels_and_boxes_by_image(tmp_path):
    df = read_labels(write(tmp_path, GOOD))
    y = image_level_labels(df)
    assert list(y.index) == ["a", "b"] and y.shape == (2, 15)
    assert y.loc["a"].tolist() == [0] * 14 + [1]
    assert y.loc["b", 8] == 1 and y.loc["b", 3] == 1 and y.loc["b"].sum() == 2
    boxes = labels_by_image(df)
    assert len(boxes["a"]) == 0 and boxes["b"].class_ids.tolist() == [8, 3]
    with_normal = labels_by_image(df, include_no_finding=True)
    np.testing.assert_array_equal(with_normal["a"].boxes, [[0, 0, 1, 1], [0, 0, 1, 1]])


@pytest.mark.parametrize("before, line", [
    ("\n", 7),                          # one blank line: pandas skips it, the file does not
    ("\n  \n\t\n", 9),                  # blank and whitespace-only lines
    ('c,ILD,5,"R\n1",1,2,20,9\n', 8),  # a quoted field spanning two lines
    ('\nc,ILD,5,"R\n\n1",1,2,20,9\n\n', 11),
])
def test_bad_row_after_blank_or_multiline_rows_names_its_physical_line(tmp_path, before, line):
    path = write(tmp_path, GOOD + before + "c,ILD,5,R1,30,1,20,9\n")
    msg = error_of(path)
    assert f"{path}:{line}: x_min 30 >= x_max 20" in msg and "1 bad row(s)" in msg


def test_blank_lines_before_header_and_in_meta_count(tmp_path):
    path = write(tmp_path, GOOD + "c,ILD,5,R1,30,1,20,9\n", header="\n" + HEADER)
    assert f"{path}:7: " in error_of(path)
    meta = tmp_path / "META.csv"
    meta.write_text("image_id,rows,columns\na,10,20\n\n\nb,,1024\n")
    with pytest.raises(UserError, match=r"META.csv:5: "):
        image_sizes_from_meta(meta)


def test_good_file_with_blank_lines_reads_all_rows(tmp_path):
    assert len(read_labels(write(tmp_path, "\n" + GOOD.replace("\n", "\n\n")))) == 4


def test_image_size_lookup_strips_the_image_id(tmp_path):
    path = write(tmp_path, GOOD.replace("b,Cardiomegaly", "b  ,Cardiomegaly"))
    msg = error_of(path, image_sizes={"b": (350, 1000)})
    assert f"{path}:5: " in msg and "outside the image (height 350, width 1000)" in msg


@pytest.mark.parametrize("body, line", [
    (GOOD + '"c,ILD,5,R1,1,2,20,9\n', 6),  # a stray quote at the start of a line, never closed
    (GOOD.replace("R3,", 'R3",', 1) + 'c,ILD,5,"R1,1,2,20,9\nd,ILD,5,R1,1,2,20,9\n', 6),
])
def test_a_quote_left_open_to_the_end_of_the_file_names_its_line(tmp_path, body, line):
    path = write(tmp_path, body)
    msg = error_of(path)
    assert msg.startswith(f"{path}:{line}: a quote (\") opened on this line is never closed"), msg


def test_undecodable_bytes_name_their_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes((HEADER + GOOD).encode() + b"c,ILD,5,R\xff1,1,2,20,9\n")
    assert error_of(path).startswith(f"{path}:6: not UTF-8 text (byte 0xff")
