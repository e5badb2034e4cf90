"""User-facing errors and exit codes (0 ok, 2 bad usage or input, 3 finished with failed inputs).

``UserError`` stops a run: the CLI prints its message (no traceback) and exits 2. Its message
must name the file (and line, where there is one), what was expected versus found, and the fix.

Inputs that fail while the rest of the run goes on are collected in
``cxrdet.formats.failures.FailureLog`` (errors CSV, stderr list, exit 3).
"""

from __future__ import annotations

import os
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
