"""The records of a CSV file a user hands us, each with the line it starts on.

The csv module alone lets three things escape as tracebacks, all seen on real files:

- a field longer than its default limit of 131,072 characters (``_csv.Error: field larger than
  field limit``). A legitimate submission has such fields: 10,000 boxes on one image are a
  ~400 KB PredictionString. The limit is lifted here (it guards nothing the reader needs).
- bytes that are not UTF-8 (``UnicodeDecodeError``): refused naming the line of the first one.
- a line that opens a quote and never closes it: with no limit, the quoted field swallows the
  rest of the file. None of our formats has a field spanning lines, so a field holding a line
  break is refused, naming the line where its quote opened.

A UTF-8 byte order mark (Excel writes one) is dropped.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from cxrdet.errors import UserError

# Largest value csv.field_size_limit accepts on every platform (a C long is 32-bit on Windows).
FIELD_SIZE_LIMIT = min(sys.maxsize, 2 ** 31 - 1)


def read_text(path: str | os.PathLike) -> str:
    """The file as text: UTF-8 (a leading BOM dropped); UserError naming the line otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read the file ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} cannot be decoded); "
                        "save the file as UTF-8 CSV") from None


def csv_records(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    """``(line the record starts on, fields)`` for every record, header included (line 1).

    Blank lines come back as empty records (``[]``), as the csv module gives them. Raises
    UserError for undecodable bytes, an unclosed quote, or anything else the parser refuses.
    """
    path = Path(path)
    text = read_text(path)
    if csv.field_size_limit() < FIELD_SIZE_LIMIT:
        csv.field_size_limit(FIELD_SIZE_LIMIT)
    reader = csv.reader(io.StringIO(text, newline=""))
    end = 0
    while True:
        start = end + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise UserError(f"{path}:{start}: not a readable CSV record ({e}); fix this line") from None
        end = reader.line_num
        if any("\n" in f or "\r" in f for f in row):
            raise UserError(
                f"{path}:{start}: a quote (\") opened on this line is not closed before the line ends "
                f"(the quoted field runs on to line {end}); remove the stray quote or close it")
        yield start, row


def unclosed_quote_line(text: str) -> int | None:
    """The line of a quote that nothing closes (its field runs to the end of ``text``), or None.

    For readers that let pandas parse (its "EOF inside string starting at row N" counts rows,
    not lines). Only the last record can hold such a quote; it is parsed again strictly, which
    tells an unclosed quote from a closed field that spans lines (legal in a label CSV).
    """
    if csv.field_size_limit() < FIELD_SIZE_LIMIT:
        csv.field_size_limit(FIELD_SIZE_LIMIT)
    reader = csv.reader(io.StringIO(text, newline=""))
    start = end = 0
    try:
        for _ in reader:
            start, end = end + 1, reader.line_num
    except csv.Error:
        return None
    if not start:
        return None
    lines = io.StringIO(text, newline="").readlines()  # the same line breaks the csv module counts
    try:
        list(csv.reader(io.StringIO("".join(lines[start - 1:]), newline=""), strict=True))
    except csv.Error as e:
        return start if "unexpected end of data" in str(e) else None
    return None
