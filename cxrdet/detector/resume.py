"""Continuing a run folder: which checkpoint to resume from, and which settings may not change.

``cxrdet train --resume`` continues RUN_DIR and fails when there is nothing to continue;
``--resume auto`` continues when there is something and starts fresh otherwise, so a SLURM requeue
can rerun the very same command (see :mod:`cxrdet.training.resume`, shared with the classifier). The newest of ``checkpoints/last.ckpt`` and Lightning's SLURM checkpoints
(``RUN_DIR/hpc_ckpt_N.ckpt``, written when the job is signalled before preemption) is used.

A resumed run keeps its architecture (the checkpoint must fit the network) and its validation
(``val_map`` of every epoch must score the same images against the same labels, or ``best.ckpt``
would be picked across different validations).
"""

from __future__ import annotations

from typing import Any

from cxrdet.detector.config import ARCHITECTURE_FIELDS, VALIDATION_FIELDS, DetectorConfig
from cxrdet.training import resume as _shared
from cxrdet.training.resume import (CKPT_DIR, HPC_GLOB, LAST, RESUME_ALWAYS, RESUME_AUTO,  # noqa: F401 (re-exported)
                                    find_checkpoint)

PATH_FIELDS = ("cache", "labels", "folds", "weights", "backbone_weights")


def changed_field(base: DetectorConfig, given: dict[str, Any]) -> str | None:
    """The first architecture or validation field that ``given`` would change in ``base`` (None: none).

    A resumed run must keep both (module docstring); paths compare as resolved files.
    """
    return _shared.changed_field(base, given, (*ARCHITECTURE_FIELDS, *VALIDATION_FIELDS), PATH_FIELDS)
