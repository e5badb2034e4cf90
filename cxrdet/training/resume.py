"""Continuing a run folder, for both training commands (``cxrdet train``, ``cxrdet train-classifier``).

A run continues from the newest of ``checkpoints/last.ckpt`` and Lightning's SLURM checkpoints
(``RUN_DIR/hpc_ckpt_N.ckpt``, written when the job is signalled before preemption). Mode
``always`` needs one, mode ``auto`` continues when there is one and starts fresh otherwise (so a
SLURM requeue reruns the very same command), no mode refuses a folder that already holds a run.

A resumed run keeps its architecture (the checkpoint must fit the network) and its validation
(the monitored score of every epoch must score the same images against the same labels, or
``best.ckpt`` would be picked across different validations). Which config fields those are is
each model's (``ARCHITECTURE_FIELDS`` / ``VALIDATION_FIELDS`` of its config module); the command
modules turn :func:`changed_field` into the message naming their flag.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrdet.errors import UserError

CKPT_DIR = "checkpoints"
LAST = "last.ckpt"
HPC_GLOB = "hpc_ckpt_*.ckpt"  # Lightning's SLURM checkpoints, written to the Trainer's default_root_dir
RESUME_ALWAYS = "always"  # the run folder must hold a run
RESUME_AUTO = "auto"  # continue when the run folder holds a run, else start fresh


def find_checkpoint(out: str | os.PathLike) -> Path | None:
    """The newest checkpoint a run in ``out`` can continue from, or None for an empty run folder."""
    root = Path(out)
    found = [p for p in [root / CKPT_DIR / LAST, *root.glob(HPC_GLOB)] if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def checkpoint_to_resume(out: str | os.PathLike, mode: str | None) -> Path | None:
    """The checkpoint to continue from in ``mode`` (None = start fresh), or a UserError saying why not."""
    ckpt = find_checkpoint(out)
    if mode == RESUME_ALWAYS and ckpt is None:
        raise UserError(f"--resume: {Path(out) / CKPT_DIR / LAST} does not exist; nothing to continue "
                        "(train without --resume first, or pass --resume auto to start fresh when empty)")
    if mode is None and ckpt is not None:
        raise UserError(f"{out} already holds a run ({ckpt}); pass --resume to continue it "
                        "(--resume auto in scripts that may rerun) or choose a new --out")
    return ckpt


def _same(name: str, old: Any, new: Any, path_fields: Sequence[str]) -> bool:
    if name in path_fields and old and new:
        # A requeued job may spell the same file differently (relative vs absolute).
        return Path(old).resolve() == Path(new).resolve()
    return old == new


def changed_field(base: Any, given: dict[str, Any], fields: Sequence[str], path_fields: Sequence[str]) -> str | None:
    """The first of ``fields`` that ``given`` would change in ``base`` (None: none); paths compare as files."""
    for name in fields:
        if name in given and not _same(name, getattr(base, name), given[name], path_fields):
            return name
    return None


def locked_field_error(base: Any, given: dict[str, Any], name: str, flag: str, source: str | os.PathLike,
                       last: Path, architecture: bool, is_path: bool) -> UserError:
    """The message refusing ``flag`` (config field ``name``) on resume: both values, why, the fix."""
    why = ("it fixes the network the checkpoint was trained as" if architecture else
           "it defines the validation that best.ckpt was chosen on")
    moved = f", or edit {name!r} in {source} if the file only moved" if is_path else ""
    return UserError(
        f"{source}: --resume cannot change {flag}: the run has {getattr(base, name)!r}, the command line "
        f"gives {given[name]!r} ({why}). Drop {flag} to continue the run as it is{moved}, or start a new "
        f"--out (add --weights {last} to start from this run's weights)"
    )
