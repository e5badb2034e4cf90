"""The probability CSV of ``cxrdet classify``: one row per image, one probability per class.

Header ``image_id,<class name>,...`` in the classifier's output order (class names as the
model recorded them; the csv module quotes any that hold a comma). Values are printed with 6
significant digits, rows sorted by image_id, CRLF line ends (the csv module's), written
atomically. Images that failed have no row (they are in the errors CSV).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrdet.errors import UserError
from cxrdet.formats import atomic
from cxrdet.formats.csvrows import csv_records

ID_COLUMN = "image_id"
MAX_SHOWN = 10


@dataclass
class Probabilities:
    class_names: list[str]
    image_ids: list[str]
    values: np.ndarray  # float64 [n_images, n_classes] in [0, 1]

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.values, index=pd.Index(self.image_ids, name=ID_COLUMN), columns=self.class_names)


def write_probabilities(path: str | os.PathLike, class_names: list[str], rows: dict[str, np.ndarray]) -> Path:
    """Write ``{image_id: probabilities}`` (sorted by id) atomically."""
    width = len(class_names)
    out = []
    for image_id in sorted(rows):
        values = np.asarray(rows[image_id], dtype=np.float64).reshape(-1)
        if len(values) != width:
            raise ValueError(f"image {image_id!r}: {len(values)} probabilities for {width} classes")
        out.append([image_id, *(f"{v:.6g}" for v in values)])
    return atomic.write_csv(path, [ID_COLUMN, *class_names], out)


def read_probabilities(path: str | os.PathLike) -> Probabilities:
    """Read and check a probability CSV (header, unique ids, numbers in [0, 1]) with line numbers."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"probability CSV {path} does not exist; write it with `cxrdet classify --out {path}`")
    records = csv_records(path)  # UTF-8 (BOM dropped), no field limit, an unclosed quote named by line
    header = _check_header(path, next(records, (1, None))[1])
    problems: list[str] = []
    ids, values, seen = [], [], {}
    for line, row in records:
        if not row:  # a blank line
            continue
        reason = _row_problem(row, len(header), seen)
        if reason:
            problems.append(f"{path}:{line}: {reason}")
            continue
        seen[row[0].strip()] = line
        ids.append(row[0].strip())
        values.append([float(v) for v in row[1:]])
    if problems:
        more = f" (and {len(problems) - MAX_SHOWN} more)" if len(problems) > MAX_SHOWN else ""
        raise UserError(f"{path}: {len(problems)} bad row(s): " + "; ".join(problems[:MAX_SHOWN]) + more +
                        ". Rewrite the file with `cxrdet classify`")
    matrix = np.asarray(values, dtype=np.float64).reshape(len(ids), len(header) - 1)
    return Probabilities(header[1:], ids, matrix)


def _check_header(path: Path, header: list[str] | None) -> list[str]:
    """The header's fields (class names stripped); UserError naming line 1 otherwise."""
    if not header or header[0].strip() != ID_COLUMN or len(header) < 2:
        raise UserError(f"{path}:1: expected the header image_id,<class>,... of `cxrdet classify`, found {header}")
    names = [h.strip() for h in header[1:]]
    repeated = sorted(n for n, k in Counter(names).items() if k > 1)
    if "" in names or repeated:  # scoring picks a class by name: each must be there once
        raise UserError(f"{path}:1: class names must be non-empty and distinct, found {names}; "
                        "rewrite the file with `cxrdet classify`")
    return [ID_COLUMN, *names]


def _row_problem(row: list[str], width: int, seen: dict[str, int]) -> str:
    """Why a data row is bad, or ''."""
    if len(row) != width:
        return f"{len(row)} fields, expected {width}"
    image_id = row[0].strip()
    if not image_id:
        return "empty image_id"
    try:
        probs = [float(v) for v in row[1:]]
    except ValueError:
        return f"probabilities must be numbers, found {_shown(row[1:])}"
    if not all(0.0 <= p <= 1.0 for p in probs):  # NaN fails both comparisons
        return f"probabilities must be in [0, 1], found {_shown(row[1:])}"
    if image_id in seen:
        return f"image_id {image_id!r} also on line {seen[image_id]}"
    return ""


def _shown(cells: list[str], limit: int = 200) -> str:
    """The cells as the message shows them: a huge field is cut, not copied into the message."""
    text = repr(cells)
    return text if len(text) <= limit else text[:limit] + "..."
