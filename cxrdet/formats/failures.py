"""The errors CSV of per-input failures: ``item,reason``, one row per failed input.

Commands that go on past a bad input collect it in a ``FailureLog``, write it beside their main
output as ``<out stem>.errors.csv`` (see ``errors_path``), list it on stderr and exit 3.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cxrdet.errors import EXIT_OK, EXIT_PARTIAL, UserError
from cxrdet.formats import atomic
from cxrdet.formats.csvrows import csv_records

HEADER = ["item", "reason"]
SUFFIX = ".errors.csv"


def errors_path(out: str | os.PathLike) -> Path:
    """The errors CSV that goes with output ``out``: ``<out stem>.errors.csv`` beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}{SUFFIX}")


@dataclass
class FailureLog:
    """Inputs that failed (``item`` = file or image id) with a one-line reason each."""

    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, item: str, reason: str) -> None:
        self.rows.append((str(item), " ".join(str(reason).split())))

    def extend(self, other: "FailureLog") -> None:
        self.rows.extend(other.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Write ``item,reason`` rows atomically (header even when empty: a clean run is visible)."""
        return atomic.write_csv(path, HEADER, self.rows)

    def report(self, csv_path: str | os.PathLike | None = None, limit: int = 20) -> int:
        """Print the failures to stderr, write the CSV, and return the exit code (0 or 3)."""
        if csv_path is not None:
            self.write_csv(csv_path)
        if not self.rows:
            return EXIT_OK
        where = f" (all listed in {csv_path})" if csv_path is not None else ""
        print(f"{len(self.rows)} input(s) failed{where}:", file=sys.stderr)
        for item, reason in self.rows[:limit]:
            print(f"  {item}: {reason}", file=sys.stderr)
        if len(self.rows) > limit:
            print(f"  ... and {len(self.rows) - limit} more", file=sys.stderr)
        return EXIT_PARTIAL


def read_failures(path: str | os.PathLike) -> FailureLog:
    """Read an errors CSV back (for merging shard runs)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"errors CSV {path} does not exist (expected a file item,reason written beside an output)")
    log = FailureLog()
    records = csv_records(path)
    header = next(records, (1, None))[1]
    if header is None or [c.strip() for c in header[:2]] != HEADER:
        raise UserError(f"{path}:1: expected the header item,reason of an errors CSV, found {header}")
    for _, row in records:
        if row:
            log.add(row[0], row[1] if len(row) > 1 else "")
    return log
