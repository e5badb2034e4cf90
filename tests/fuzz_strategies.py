"""Hypothesis strategies that turn valid files into the broken ones users hand us.

One owner for every fuzz mutation: ``tests/test_fuzz_*.py`` (a few derandomized examples per
reader) and ``benchmarks/fuzz_readers.py`` (thousands) draw from the same strategies.

- :func:`mutated_bytes`: byte flips, inserts, deletes, truncation, repeated chunks.
- :func:`mutated_text`: what goes wrong in a CSV: an unbalanced quote at the start of a line,
  a huge field, NaN/inf/negative/overflowing numbers, unicode, a BOM, an empty file, deleted,
  repeated or shuffled lines and fields, other line ends; plus byte-level mutations.
- :func:`mutated_json`: a value anywhere in the document replaced (wrong type, NaN, huge,
  nested), a key deleted or added, or the text mutated.
- :func:`csv_documents`: structured generation of whole CSVs from per-column cell strategies.
"""

from __future__ import annotations

import functools
import json
import math

from hypothesis import strategies as st

# no subnormal floats: an earlier import in the same pytest process (a library built with
# -ffast-math) may set flush-to-zero, and Hypothesis then refuses to draw them at all
floats = functools.partial(st.floats, allow_subnormal=False)

HUGE_FIELD = 200_000  # above the csv module's default 131,072-character field limit

# Cell values that have broken parsers before: non-finite and overflowing numbers, signs,
# exponents, whitespace, quotes, separators, control and right-to-left characters.
SPECIAL_CELLS = [
    "", " ", "NaN", "nan", "inf", "-inf", "Infinity", "-1", "-0", "0", "1", "14", "15", "1e309",
    "-1e309", "1e-320", "9" * 400, "0x10", "1_000", "1,5", "1.5.5", "+3", " 7 ", "None", "null",
    "true", '"', '""', "'", ",", ";", "\t", "\n", "\r", "\x00", "\ufeff", "é", "图像", "\u202e",
    "😀", "\\", "../../etc/passwd", "a" * 1000,
]


@st.composite
def _byte_edit(draw, data: bytes) -> bytes:
    n = len(data)
    kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "repeat"]))
    if kind == "truncate" or n == 0:
        return data[: draw(st.integers(0, n))]
    i = draw(st.integers(0, n - 1))
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1:]
    if kind == "set":
        chunk = draw(st.binary(min_size=1, max_size=8))
        return data[:i] + chunk + data[i + len(chunk):]
    if kind == "insert":
        return data[:i] + draw(st.binary(min_size=1, max_size=16)) + data[i:]
    if kind == "delete":
        return data[:i] + data[i + draw(st.integers(1, 16)):]
    j = min(n, i + draw(st.integers(1, 64)))
    return data[:j] + data[i:j] * draw(st.integers(1, 4)) + data[j:]


@st.composite
def mutated_bytes(draw, seed: bytes, max_edits: int = 4) -> bytes:
    """``seed`` after 1..max_edits random byte edits."""
    data = seed
    for _ in range(draw(st.integers(1, max_edits))):
        data = draw(_byte_edit(data))
    return data


def _split_lines(text: str) -> list[str]:
    return text.splitlines(keepends=True) or [""]


@st.composite
def _text_edit(draw, text: str) -> str:
    lines = _split_lines(text)
    i = draw(st.integers(0, len(lines) - 1))
    kind = draw(st.sampled_from([
        "quote_line", "quote_field", "huge_field", "special_cell", "random_cell", "delete_line",
        "repeat_line", "swap_lines", "extra_field", "drop_field", "line_ends", "bom", "empty",
        "whitespace_line", "unicode",
    ]))
    line = lines[i]
    body, end = line.rstrip("\r\n"), line[len(line.rstrip("\r\n")):]
    fields = body.split(",")
    k = draw(st.integers(0, len(fields) - 1))
    if kind == "quote_line":  # a line starting with a quote that is never closed
        lines[i] = '"' + line
    elif kind == "quote_field":
        fields[k] = '"' + fields[k]
        lines[i] = ",".join(fields) + end
    elif kind in ("huge_field", "special_cell", "random_cell", "unicode"):
        if kind == "huge_field":
            value = draw(st.sampled_from(["1 ", "x", "0.5 ", "9"])) * (HUGE_FIELD // 2)
        elif kind == "special_cell":
            value = draw(st.sampled_from(SPECIAL_CELLS))
        elif kind == "unicode":
            value = fields[k] + draw(st.text(min_size=1, max_size=4))
        else:
            value = draw(st.one_of(st.text(max_size=12), floats().map(repr), st.integers().map(str)))
        fields[k] = value
        lines[i] = ",".join(fields) + end
    elif kind == "delete_line":
        del lines[i]
    elif kind == "repeat_line":
        lines.insert(i, line if line.endswith("\n") else line + "\n")
    elif kind == "swap_lines":
        j = draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "extra_field":
        lines[i] = body + "," + draw(st.sampled_from(SPECIAL_CELLS)) + end
    elif kind == "drop_field":
        del fields[k]
        lines[i] = ",".join(fields) + end
    elif kind == "line_ends":
        new_end = draw(st.sampled_from(["\n", "\r\n", "\r", ""]))
        return "".join(x.rstrip("\r\n") + new_end for x in lines)
    elif kind == "bom":
        return "\ufeff" + text
    elif kind == "empty":
        return draw(st.sampled_from(["", "\n", "\ufeff", " \n\n"]))
    elif kind == "whitespace_line":
        lines.insert(i, draw(st.sampled_from(["\n", " \n", ",\n", ",,,\n", "\t\n"])))
    return "".join(lines)


@st.composite
def mutated_text(draw, seed: str, max_edits: int = 3) -> bytes:
    """A CSV ``seed`` after text edits (UTF-8 encoded) and, sometimes, byte edits."""
    text = seed
    for _ in range(draw(st.integers(1, max_edits))):
        text = draw(_text_edit(text))
    data = text.encode("utf-8", errors="surrogatepass")
    if draw(st.integers(0, 3)) == 0:
        data = draw(mutated_bytes(data, max_edits=2))
    return data


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
    | floats(allow_nan=True, allow_infinity=True) | st.text(max_size=10)
    | st.sampled_from(["", "NaN", "-1", "fasterrcnn_resnet50_fpn", "/nonexistent", "\x00"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


def _paths(doc, prefix=()):
    """Every (container path) to a value in a parsed JSON document."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


def _replace(doc, path, value, delete=False):
    if not path:
        return value
    head, rest = path[0], path[1:]
    out = dict(doc) if isinstance(doc, dict) else list(doc)  # a copy: the seed document stays as it is
    if delete and not rest:
        del out[head]
    else:
        out[head] = _replace(doc[head], rest, value, delete)
    return out


@st.composite
def _json_edit(draw, doc):
    paths = list(_paths(doc))
    path = draw(st.sampled_from(paths))
    kind = draw(st.sampled_from(["replace", "replace", "delete", "add_key", "scale"]))
    if kind == "delete" and path:
        return _replace(doc, path, None, delete=True)
    if kind == "add_key":
        return _replace(doc, (), {**doc, draw(st.text(max_size=8)): draw(json_values)}) \
            if isinstance(doc, dict) else doc
    if kind == "scale":  # numbers a little or very wrong: negative, zero, huge, fractional
        factor = draw(st.sampled_from([-1, 0, 0.5, 1e6, 1e300, math.inf, math.nan]))
        value = _get(doc, path)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _replace(doc, path, value * factor if math.isfinite(factor) else factor)
    return _replace(doc, path, draw(json_values))


def _get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


@st.composite
def mutated_json(draw, seed_doc, max_edits: int = 3) -> bytes:
    """A JSON document after structural edits, serialized (NaN/Infinity allowed, as Python
    writes them), and sometimes mutated as text or bytes too."""
    doc = seed_doc
    for _ in range(draw(st.integers(1, max_edits))):
        doc = draw(_json_edit(doc))
    data = json.dumps(doc, indent=draw(st.sampled_from([None, 1]))).encode()
    how = draw(st.integers(0, 5))
    if how == 0:
        data = draw(mutated_bytes(data, max_edits=2))
    elif how == 1:
        data = draw(st.sampled_from([b"", b"\xef\xbb\xbf" + data, data + b"garbage", b"[]", b"null",
                                     b'"text"', b"1e400", b"{" * 2000, b"\xff\xfe{}"]))
    return data


@st.composite
def csv_documents(draw, header: list[str], cells: dict, max_rows: int = 8) -> bytes:
    """A whole CSV: ``header`` then rows whose cells come from ``cells[column]`` (or a special
    cell), written with the csv module's quoting, sometimes with a BOM or other line ends."""
    import csv
    import io

    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator=draw(st.sampled_from(["\r\n", "\n"])))
    w.writerow(header)
    for _ in range(draw(st.integers(0, max_rows))):
        w.writerow([draw(st.one_of(cells[c], st.sampled_from(SPECIAL_CELLS))) for c in header])
    text = buf.getvalue()
    if draw(st.integers(0, 7)) == 0:
        text = "\ufeff" + text
    return text.encode("utf-8", errors="surrogatepass")
