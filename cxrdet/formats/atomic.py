"""Atomic file writes: a file appears under its final name complete or not at all.

Every file a command writes goes through here. The data is written to a temp file in the same
folder (so ``os.replace`` is a rename on one file system, atomic on POSIX and Windows) and only
then renamed; a crash, Ctrl-C or full disk leaves the previous file (or none) in place.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

FILE_MODE = 0o644  # mkstemp makes 0600; outputs are meant to be shared with the team


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on a clean exit it replaces ``path``, else it is removed.

    For writers that need a file name of their own (matplotlib, torch.save, XGBoost, cv2). The
    temp name keeps the final suffix, since some writers pick the format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def write_csv(path: str | os.PathLike, header: list[str], rows: Iterable[Iterable[Any]],
              lineterminator: str = "\r\n") -> Path:
    """Write a CSV (``header`` then ``rows``) atomically; returns the path.

    CRLF is the csv module's default (kept for old files' bytes); pandas-written formats pass "\n".
    """
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator=lineterminator)
    w.writerow(header)
    w.writerows(rows)
    return write_text(path, buf.getvalue())


def write_frame(path: str | os.PathLike, frame, **to_csv_kwargs) -> Path:
    """Write a pandas DataFrame as CSV atomically (``index=False`` unless told otherwise)."""
    to_csv_kwargs.setdefault("index", False)
    return write_text(path, frame.to_csv(**to_csv_kwargs))


def json_ready(value: Any) -> Any:
    """``value`` with NaN/inf -> None and numpy scalars/arrays -> Python types, for strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as strict JSON (NaN/inf -> null) atomically; returns the path."""
    text = json.dumps(json_ready(obj), indent=indent, allow_nan=False)
    return write_text(path, text + "\n")
