"""Continuing a run folder: which checkpoint to resume from, and which settings may not change.

``cxrdet train --resume`` continues RUN_DIR and fails when there is nothing to continue;
``--resume auto`` continues when there is something and starts fresh otherwise, so a SLURM requeue
can rerun the very same command (the messages and the choice live in the command module). The newest of ``checkpoints/last.ckpt`` and Lightning's SLURM checkpoints
(``RUN_DIR/hpc_ckpt_N.ckpt``, written when the job is signalled before preemption) is used.

A resumed run keeps its architecture (the checkpoint must fit the network) and its validation
(``val_map`` of every epoch must score the same images against the same labels, or ``best.ckpt``
would be picked across different validations).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cxrdet.detector.config import ARCHITECTURE_FIELDS, VALIDATION_FIELDS, DetectorConfig

CKPT_DIR = "checkpoints"
LAST = "last.ckpt"
HPC_GLOB = "hpc_ckpt_*.ckpt"  # Lightning's SLURM checkpoints, written to the Trainer's default_root_dir
RESUME_ALWAYS = "always"  # the run folder must hold a run
RESUME_AUTO = "auto"  # continue when the run folder holds a run, else start fresh
PATH_FIELDS = ("cache", "labels", "folds", "weights", "backbone_weights")


def find_checkpoint(out: str | os.PathLike) -> Path | None:
    """The newest checkpoint a run in ``out`` can continue from, or None for an empty run folder."""
    root = Path(out)
    found = [p for p in [root / CKPT_DIR / LAST, *root.glob(HPC_GLOB)] if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _same(name: str, old: Any, new: Any) -> bool:
    if name in PATH_FIELDS and old and new:
        # A requeued job may spell the same file differently (relative vs absolute).
        return Path(old).resolve() == Path(new).resolve()
    return old == new


def changed_field(base: DetectorConfig, given: dict[str, Any]) -> str | None:
    """The first architecture or validation field that ``given`` would change in ``base`` (None: none).

    A resumed run must keep both (module docstring); paths compare as resolved files.
    """
    for name in (*ARCHITECTURE_FIELDS, *VALIDATION_FIELDS):
        if name in given and not _same(name, getattr(base, name), given[name]):
            return name
    return None
