"""Continuing a run folder: which checkpoint to resume from, and which settings may not change.

``--resume`` continues RUN_DIR and fails when there is nothing to continue; ``--resume auto``
continues when there is something and starts fresh otherwise, so a SLURM requeue can rerun the
very same command. The newest of ``checkpoints/last.ckpt`` and Lightning's SLURM checkpoints
(``RUN_DIR/hpc_ckpt_N.ckpt``, written when the job is signalled before preemption) is used.

A resumed run keeps its architecture (the checkpoint must fit the network) and its validation
(the monitored score of every epoch must score the same images against the same labels, or
``best.ckpt`` would be picked across different validations). Which config fields those are is
each model's business (``ARCHITECTURE_FIELDS`` / ``VALIDATION_FIELDS`` of its config module).
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
RESUME_ALWAYS = "always"  # `--resume`: RUN_DIR must hold a run
RESUME_AUTO = "auto"  # `--resume auto`: continue when RUN_DIR holds a run, else start fresh


def find_checkpoint(out: str | os.PathLike) -> Path | None:
    """The newest checkpoint a run in ``out`` can continue from, or None for an empty run folder."""
    root = Path(out)
    found = [p for p in [root / CKPT_DIR / LAST, *root.glob(HPC_GLOB)] if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def resume_from(out: str | os.PathLike, mode: str | None) -> Path | None:
    """The checkpoint to continue from under ``--resume [auto]`` (None = start fresh), or a UserError."""
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


def check_unchanged(base: Any, given: dict[str, Any], source: str | os.PathLike, last: Path,
                    architecture: Sequence[str], validation: Sequence[str], path_fields: Sequence[str]) -> None:
    """Refuse flags that would change the architecture or the validation of the run being resumed."""
    for name in (*architecture, *validation):
        old = getattr(base, name)
        if name not in given or _same(name, old, given[name], path_fields):
            continue
        flag = "--" + name.replace("_", "-")
        why = ("it fixes the network the checkpoint was trained as" if name in architecture else
               "it defines the validation that best.ckpt was chosen on")
        moved = f", or edit {name!r} in {source} if the file only moved" if name in path_fields else ""
        raise UserError(
            f"{source}: --resume cannot change {flag}: the run has {old!r}, the command line gives "
            f"{given[name]!r} ({why}). Drop {flag} to continue the run as it is{moved}, or start a new "
            f"--out (add --weights {last} to start from this run's weights)"
        )
