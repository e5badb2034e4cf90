"""Write the SR of each recorded image: ``<sr_dir>/<image_id>.dcm``, atomically.

:class:`SRWriter` is the per-image hook of the inference loop
(:attr:`cxrdet.inference.infer.Outputs.on_record`): it reads the source file's header again
(no pixels), builds the SR from the submitted detections and the image-level row, and writes it.
A source that cannot carry an SR (no UIDs, no PatientID, unreadable header) raises InputFailure,
which the loop lists as that image's failure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from cxrdet.classes import CLASS_NAMES, NUM_FINDINGS
from cxrdet.detections import Detections
from cxrdet.dicomio.errors import BadDicomError
from cxrdet.dicomio.meta import open_header
from cxrdet.dicomout.sr import ImageResult, sr_bytes
from cxrdet.errors import InputFailure, safe_child
from cxrdet.formats import atomic
from cxrdet.formats.image_level import classifier_column

SR_SUFFIX = ".dcm"


def sr_path(sr_dir: str | os.PathLike, image_id: str) -> Path:
    """Where the SR of ``image_id`` goes; ids that would leave ``sr_dir`` are refused."""
    return safe_child(sr_dir, image_id, SR_SUFFIX)


def classifier_from_row(row: Mapping) -> dict[int, float]:
    """class_id -> probability of the 14 findings among an image-level row's ``clf_<class>``
    columns (a VinBigData classifier's, from ``infer --classifier``); other classes (``abnormal``,
    an NIH or folder classifier's names) have no finding code and stay in the image-level CSV."""
    out = {}
    for class_id, name in enumerate(CLASS_NAMES[:NUM_FINDINGS]):
        value = row.get(classifier_column(name))
        if value is not None and math.isfinite(float(value)):
            out[class_id] = float(value)
    return out


class SRWriter:
    """``writer(sample, dets, row)`` writes the SR of ``sample`` (source file ``paths[image_id]``).

    Only findings scoring at least ``min_score`` go in: a viewer draws every region, and the
    hundreds of low-score boxes a submission keeps (free under mAP) would bury the few that
    matter, and cost highdicom ~50 ms each to build.
    """

    def __init__(self, sr_dir: str | os.PathLike, paths: Mapping[str, os.PathLike],
                 low: float | None = None, high: float | None = None, min_score: float = 0.0) -> None:
        self.sr_dir = Path(sr_dir)
        self.min_score = float(min_score)
        self.paths = paths
        self.low, self.high = low, high
        self.written: list[Path] = []

    def check_names(self, ids) -> None:
        """Refuse, before any work, ids that cannot be file names under the SR folder."""
        for image_id in ids:
            sr_path(self.sr_dir, image_id)

    def __call__(self, sample, dets: Detections, row: dict) -> Path:
        path = self.paths[sample.image_id]
        try:
            header = open_header(path)
        except BadDicomError as e:
            raise InputFailure(f"re-reading its header for the SR failed: {e.reason}") from None
        result = ImageResult.from_row(row, self.low, self.high, classifier_from_row(row))
        dets = dets.select(dets.scores >= self.min_score)
        out = atomic.write_bytes(sr_path(self.sr_dir, sample.image_id), sr_bytes(header, dets, result))
        self.written.append(out)
        return out
