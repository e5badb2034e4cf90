"""Output-path checks run before any decoding: a bad ``--meta-out`` must fail in a second with
a message, not as a traceback after an hour of work."""

from __future__ import annotations

import os
from pathlib import Path

from cxrdet.errors import UserError


def check_output_file(path: Path, flag: str) -> None:
    """UserError unless a file can be written at ``path`` (missing folders are created later)."""
    if path.is_dir():
        example = "cache.h5" if flag == "--out" else f"{flag.strip('-').removesuffix('-out')}.csv"
        raise UserError(f"{flag} {path} is a folder; expected a file path: pass a file name, "
                        f"e.g. {path / example}")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{flag} {path}: {ancestor} is a file, not a folder, so nothing can be "
                        "written under it; choose a path inside a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: the folder {ancestor} is not writable; choose a folder "
                        "you can write to")


def check_output_files(outputs: dict[str, Path | None]) -> None:
    """Check each ``{flag: path}`` (None = not written) and that no two flags share a file."""
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        check_output_file(path, flag)
        key = path.resolve()
        if key in seen:
            raise UserError(f"{seen[key]} and {flag} both point at {path}; each output needs "
                            "its own file")
        seen[key] = flag
