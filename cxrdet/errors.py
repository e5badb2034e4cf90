"""User-facing errors and per-input failure lists (DESIGN.md §8 exit codes).

``UserError`` stops a run: the CLI prints its message (no traceback) and exits 2. Its message
must name the file (and line, where there is one), what was expected versus found, and the fix.

``FailureLog`` collects inputs that failed while the rest of the run went on; the command
writes it as an errors CSV, lists it on stderr and exits 3.
"""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_PARTIAL = 3


class UserError(Exception):
    """Bad usage or bad input that stops the run; exit code 2, message only."""

    exit_code = EXIT_USAGE


class InputFailure(Exception):
    """One input cannot be processed while the run goes on; the message is the listed reason."""


def failure_reason(e: BaseException) -> str:
    """The one-line reason a FailureLog lists for ``e``.

    Our own messages (UserError, InputFailure, or a ``reason`` attribute) are shown as written;
    anything else keeps its type name, which is often the only clue to what broke. A KeyError's
    ``str`` is the repr of its key (quotes and escapes), so its argument is used instead.
    """
    reason = getattr(e, "reason", None)
    if reason:
        return str(reason)
    message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, (UserError, InputFailure)):
        return message
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


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
        """Write ``item,reason`` rows (header even when empty, so a clean run is visible)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["item", "reason"])
            w.writerows(self.rows)
        return path

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


def safe_child(root: str | os.PathLike, name: str, suffix: str = "") -> Path:
    """``root/name+suffix``, refusing names that would escape ``root`` (image ids are data)."""
    if not name or name in {".", ".."} or "/" in name or "\\" in name or "\x00" in name:
        raise UserError(
            f"image id {name!r} cannot be used as a file name under {root}: "
            "ids must not be empty or contain path separators"
        )
    root_path = Path(root).resolve()
    child = (root_path / f"{name}{suffix}").resolve()
    if child.parent != root_path:
        raise UserError(f"image id {name!r} resolves outside {root}")
    return child
