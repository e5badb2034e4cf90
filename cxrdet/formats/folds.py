"""FOLDS.csv: ``image_id,fold``, one row per image, written by ``cxrdet split``.

The one reader every command uses. Checks: the file exists and parses, the header names
``image_id`` and ``fold``, every fold is an integer >= 0, every id is non-empty and listed once.
Every bad row is reported as ``file:line`` (physical CSV lines, header = line 1).
"""

from __future__ import annotations

import os
from pathlib import Path

from cxrdet.errors import UserError
from cxrdet.formats import atomic
from cxrdet.formats.csvrows import csv_records

HEADER = ["image_id", "fold"]
MAX_SHOWN = 10  # bad rows quoted in one message; the count is always given
MAKE_IT = "make it with `cxrdet split --labels train.csv --n-folds 5 --out FOLDS.csv`"


def read_folds(path: str | os.PathLike) -> dict[str, int]:
    """image_id -> fold (in file order). Raises UserError naming each bad line and the fix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"folds file {path} does not exist (expected a file image_id,fold; {MAKE_IT})")
    rows, problems = _read_rows(path)
    if problems:
        shown = "; ".join(f"{path}:{line}: {msg}" for line, msg in problems[:MAX_SHOWN])
        more = f" (and {len(problems) - MAX_SHOWN} more)" if len(problems) > MAX_SHOWN else ""
        raise UserError(f"{len(problems)} bad row(s) in folds file {path}: {shown}{more}. "
                        f"Fix these rows or {MAKE_IT}")
    if not rows:
        raise UserError(f"folds file {path} lists no image; {MAKE_IT}")
    return rows


def _read_rows(path: Path) -> tuple[dict[str, int], list[tuple[int, str]]]:
    folds: dict[str, int] = {}
    problems: list[tuple[int, str]] = []
    first_line: dict[str, int] = {}
    records = csv_records(path)
    header = next(records, (1, None))[1]
    cols = [c.strip() for c in header] if header else []
    if "image_id" not in cols or "fold" not in cols:
        raise UserError(f"{path}:1: expected the header image_id,fold, found {','.join(cols) or 'nothing'}; "
                        f"{MAKE_IT}")
    i_id, i_fold = cols.index("image_id"), cols.index("fold")
    for start, row in records:
        if not row or not any(c.strip() for c in row):
            continue
        msg = _row_problem(row, i_id, i_fold, len(cols))
        image_id = row[i_id].strip() if not msg else ""
        if not msg and image_id in first_line:
            msg = f"image_id {image_id!r} is listed again (first on line {first_line[image_id]})"
        if msg:
            problems.append((start, msg))
            continue
        first_line[image_id] = start
        folds[image_id] = int(row[i_fold].strip())
    return folds, problems


def _row_problem(row: list[str], i_id: int, i_fold: int, n_cols: int) -> str:
    if len(row) != n_cols:
        return f"expected {n_cols} fields, found {len(row)}"
    if not row[i_id].strip():
        return "empty image_id"
    text = row[i_fold].strip()
    try:
        value = int(text)
    except ValueError:
        return f"fold {text!r} is not an integer"
    if value < 0:
        return f"fold {value} is negative (folds are 0..K-1)"
    return ""


def fold_members(folds: dict[str, int], fold: int) -> list[str]:
    """The ids of ``fold``, in file order."""
    return [i for i, k in folds.items() if k == fold]


def write_folds(path: str | os.PathLike, folds: dict[str, int]) -> Path:
    """Write ``image_id,fold`` atomically (rows in the mapping's order)."""
    return atomic.write_csv(path, HEADER, ((i, int(k)) for i, k in folds.items()))
