"""The probability CSV of ``cxrdet classify``: one row per image, one probability per class.

Header ``image_id,<class name>,...`` in the classifier's output order (class names as the
model recorded them; the csv module quotes any that hold a comma). Values are printed with 6
significant digits, rows sorted by image_id, CRLF line ends (the csv module's), written
atomically. Images that failed have no row (they are in the errors CSV).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrdet.errors import UserError
from cxrdet.formats import atomic

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
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            records = [(reader.line_num, row) for row in reader if row]
    except FileNotFoundError:
        raise UserError(f"probability CSV {path} does not exist; write it with `cxrdet classify --out {path}`") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable CSV ({e})") from None
    if not header or header[0] != ID_COLUMN or len(header) < 2:
        raise UserError(f"{path}:1: expected the header image_id,<class>,... of `cxrdet classify`, found {header}")
    problems: list[str] = []
    ids, values, seen = [], [], {}
    for line, row in records:
        if len(row) != len(header):
            problems.append(f"{path}:{line}: {len(row)} fields, expected {len(header)}")
            continue
        try:
            probs = [float(v) for v in row[1:]]
        except ValueError:
            problems.append(f"{path}:{line}: probabilities must be numbers, found {row[1:]}")
            continue
        if not all(0.0 <= p <= 1.0 for p in probs):
            problems.append(f"{path}:{line}: probabilities must be in [0, 1], found {row[1:]}")
        elif row[0] in seen:
            problems.append(f"{path}:{line}: image_id {row[0]!r} also on line {seen[row[0]]}")
        else:
            seen[row[0]] = line
            ids.append(row[0])
            values.append(probs)
    if problems:
        more = f" (and {len(problems) - MAX_SHOWN} more)" if len(problems) > MAX_SHOWN else ""
        raise UserError(f"{len(problems)} bad row(s): " + "; ".join(problems[:MAX_SHOWN]) + more +
                        ". Rewrite the file with `cxrdet classify`")
    matrix = np.asarray(values, dtype=np.float64).reshape(len(ids), len(header) - 1)
    return Probabilities(list(header[1:]), ids, matrix)
