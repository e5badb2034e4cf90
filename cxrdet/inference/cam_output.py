"""``classify --cam-dir``: Grad-CAM heatmaps of each batch -> overlay PNGs (+ the raw HDF5 file).

Per image, the classes chosen by ``--cam-classes`` get a heatmap (:mod:`cxrdet.classifier.cam`),
an overlay PNG (:mod:`cxrdet.inference.cam_pictures`) and, with ``--cam-raw``, a record in
``DIR/heatmaps.h5`` (:mod:`cxrdet.formats.heatmaps`: cache-size heatmaps, original size and
the mapping to original pixels). An image whose heatmaps fail is listed in the command's
errors CSV; its probabilities are kept.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cxrdet.classifier.cam import METHOD, CamExplainer, CamClasses
from cxrdet.errors import failure_reason
from cxrdet.formats.failures import FailureLog
from cxrdet.formats.heatmaps import HeatmapRecord, HeatmapWriter
from cxrdet.inference.cam_pictures import write_cam_picture
from cxrdet.inference.sources import Sample

RAW_FILE = "heatmaps.h5"


class CamOutput:
    """Heatmaps for the batches of one ``classify`` run; :meth:`close` publishes the raw file."""

    def __init__(self, folder: str | os.PathLike, models, classes: CamClasses, device: torch.device,
                 batch_size: int, raw: bool, model_records: list) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.class_names = list(models[0][1].class_names)
        self.classes = classes
        self.explainer = CamExplainer(models, device, batch_size)
        self.writer = HeatmapWriter(self.folder / RAW_FILE, self.class_names, METHOD, model_records) if raw else None
        self.pictures = 0

    def add_batch(self, samples: Sequence[Sample], probabilities: np.ndarray, failures: FailureLog) -> None:
        """Explain ``samples`` (all readable) given their probabilities ``[B, C]``."""
        chosen = [self.classes.choose(p, self.class_names) for p in probabilities]
        try:
            maps = self.explainer.explain([s.image for s in samples], chosen)
        except Exception as e:  # e.g. out of memory: listed per image, the run goes on
            for s in samples:
                failures.add(s.image_id, f"Grad-CAM failed on its batch: {failure_reason(e)}")
            return
        for s, p, cl, m in zip(samples, probabilities, chosen, maps):
            try:
                self._write(s, p, cl, m)
            except Exception as e:
                failures.add(s.image_id, f"heatmap output failed: {failure_reason(e)}")

    def _write(self, s: Sample, p: np.ndarray, chosen: list[int], maps: np.ndarray) -> None:
        for k, c in enumerate(chosen):
            text = f"{self.class_names[c]} p={p[c]:.2f} (Grad-CAM)"
            write_cam_picture(self.folder, s.image_id, c, s.image, maps[k], text)
            self.pictures += 1
        if self.writer is not None:
            orig_hw = tuple(int(v) for v in (s.orig_hw or s.image.shape[:2]))
            self.writer.add(HeatmapRecord(s.image_id, orig_hw, list(chosen), [float(p[c]) for c in chosen], maps))

    def close(self, ok: bool = True) -> Path | None:
        self.explainer.close()
        if self.writer is None:
            return None
        if not ok:
            self.writer.abort()
            return None
        return self.writer.close()
