"""Continuing a detector run folder (``cxrdet.training.resume``, with the detector's locked fields).

A resumed run keeps its architecture (the checkpoint must fit the network) and its validation
(``val_map`` of every epoch must score the same images against the same labels, or ``best.ckpt``
would be picked across different validations): :data:`ARCHITECTURE_FIELDS` and
:data:`VALIDATION_FIELDS` of :mod:`cxrdet.detector.config`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cxrdet.detector.config import ARCHITECTURE_FIELDS, VALIDATION_FIELDS, DetectorConfig
from cxrdet.training import resume as _shared
from cxrdet.training.resume import (CKPT_DIR, HPC_GLOB, LAST, RESUME_ALWAYS, RESUME_AUTO,  # noqa: F401 (re-exported)
                                    find_checkpoint, resume_from)

PATH_FIELDS = ("cache", "labels", "folds", "weights", "backbone_weights")


def check_unchanged(base: DetectorConfig, given: dict[str, Any], source: str | os.PathLike, last: Path) -> None:
    """Refuse flags that would change the architecture or the validation of the run being resumed."""
    _shared.check_unchanged(base, given, source, last, ARCHITECTURE_FIELDS, VALIDATION_FIELDS, PATH_FIELDS)
