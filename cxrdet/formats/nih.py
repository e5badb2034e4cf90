"""The NIH ChestX-ray14 style label CSV (``Data_Entry_2017.csv`` and its PadChest-like cousins).

Columns used: ``Image Index`` (the image file name, e.g. ``00000001_000.png``) and
``Finding Labels`` (findings joined by ``|``, or ``No Finding``); other columns (age, view,
...) are ignored. The classes are the findings present in the file, sorted by name, so a file
with 14 NIH findings gives 14 outputs; ``No Finding`` is not a class (it is the all-zero row).

The image id is the file name without its extension (``00000001_000``), which is the id
``cxrdet prepare --image-dir`` gives a file directly in the folder it reads.
Every bad row is reported with its CSV line (header = line 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from cxrdet.errors import UserError
from cxrdet.formats.labels import bad_rows_error, physical_lines, read_csv_cells

IMAGE_COLUMN = "Image Index"
FINDINGS_COLUMN = "Finding Labels"
NO_FINDING = "No Finding"
SEPARATOR = "|"
REQUIRED = (IMAGE_COLUMN, FINDINGS_COLUMN)


@dataclass(frozen=True)
class NihLabels:
    """Multi-hot targets of an NIH-style file: ``targets[i, k]`` is 1 when image i has class k."""

    image_ids: list[str]  # in file order
    class_names: list[str]  # findings present in the file, sorted
    targets: np.ndarray  # float32 [n_images, n_classes] of 0/1


def looks_like_nih(columns: list[str]) -> bool:
    """Whether a CSV header is an NIH-style one (both required columns present)."""
    return all(c in columns for c in REQUIRED)


def image_id_from_index(name: str) -> str:
    """``00000001_000.png`` -> ``00000001_000`` (the id prepare gives that file)."""
    return PurePosixPath(name.strip().replace("\\", "/")).stem


def _row_problem(index: str, findings: list[str]) -> str:
    if not index.strip():
        return f"empty {IMAGE_COLUMN!r}"
    if not image_id_from_index(index) or any(c in index for c in "/\\\r\n"):
        return f"{IMAGE_COLUMN} {index!r} is not a plain file name (expected e.g. 00000001_000.png)"
    if not findings or any(not f for f in findings):
        return f"{FINDINGS_COLUMN} {SEPARATOR.join(findings)!r} has an empty finding (expected names joined by '|')"
    if NO_FINDING in findings and len(findings) > 1:
        return f"{FINDINGS_COLUMN} {SEPARATOR.join(findings)!r} combines {NO_FINDING!r} with findings"
    return ""


def read_nih_labels(path: str | os.PathLike) -> NihLabels:
    """Read and check an NIH-style CSV; a UserError lists every bad line and the fix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found; pass an NIH-style CSV ({IMAGE_COLUMN}, {FINDINGS_COLUMN})")
    df = read_csv_cells(path)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise UserError(f"{path}:1: missing column(s) {missing}; expected an NIH ChestX-ray14 header with "
                        f"{IMAGE_COLUMN!r} and {FINDINGS_COLUMN!r}, found {list(df.columns)}")
    if len(df) == 0:
        raise UserError(f"{path}: the file has a header but no rows; expected one row per image")
    return _parse(path, df)


def _parse(path: Path, df: pd.DataFrame) -> NihLabels:
    problems: list[tuple[int, str]] = []
    ids: list[str] = []
    per_image: list[list[str]] = []
    first_row: dict[str, int] = {}
    for i, (index, labels) in enumerate(zip(df[IMAGE_COLUMN], df[FINDINGS_COLUMN])):
        findings = [f.strip() for f in labels.split(SEPARATOR)] if labels.strip() else []
        reason = _row_problem(index, findings)
        image_id = image_id_from_index(index) if not reason else ""
        if not reason and image_id in first_row:
            reason = f"image {index.strip()!r} is listed twice (first on row {first_row[image_id]})"
        if reason:
            problems.append((i, reason))
            continue
        first_row[image_id] = i
        ids.append(image_id)
        per_image.append([f for f in findings if f != NO_FINDING])
    if problems:
        lines = physical_lines(path, len(df))
        fixed = [(int(lines[i]), _renumber(reason, lines)) for i, reason in problems]
        raise bad_rows_error(path, fixed, f"Fix these rows ({IMAGE_COLUMN} = file name, {FINDINGS_COLUMN} = "
                                          f"findings joined by '|' or {NO_FINDING!r}), then rerun.")
    names = sorted({f for fs in per_image for f in fs})
    if not names:
        raise UserError(f"{path}: every row is {NO_FINDING!r}; a classifier needs at least one finding class")
    col = {n: k for k, n in enumerate(names)}
    targets = np.zeros((len(ids), len(names)), np.float32)
    for r, fs in enumerate(per_image):
        targets[r, [col[f] for f in fs]] = 1.0
    return NihLabels(ids, names, targets)


def _renumber(reason: str, lines: np.ndarray) -> str:
    """'first on row k' (a data-row index) -> 'first on line L' (the file line)."""
    marker = "(first on row "
    if marker not in reason:
        return reason
    head, tail = reason.split(marker)
    return f"{head}(first on line {int(lines[int(tail.rstrip(')'))])})"
