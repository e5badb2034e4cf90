"""The processing side of ``cxrdet listen``: the inbox on disk, the queue and the worker thread.

State lives in files only, so a killed node loses nothing::

    OUT/inbox/<SOP Instance UID>.dcm   received images, written (atomically) before C-STORE success
    OUT/sr/<SOP Instance UID>.dcm      the SR of each processed image: its presence means "done"
    OUT/failed/<SOP Instance UID>.dcm  images that could not be processed (moved out of the inbox)
    OUT/image_level.csv                one row per processed image (cxrdet.formats.image_level)
    OUT/listen.errors.csv              item,reason per failed image (cxrdet.formats.failures)

On start (:meth:`Worker.resume`, before the node serves), every inbox file without an SR is
queued again (received-but-unreported images); an image already waiting in the queue is not
queued twice.
The worker takes up to ``batch_size`` queued images at a time through exactly the code of
``cxrdet infer --dicom-dir`` (same preprocessing, detectors, TTA/WBF, mapping and gate:
:func:`cxrdet.inference.infer.process_batch`), then writes per image: the image-level row first
and the SR last (an image killed in between is processed again; its row is replaced), and
hands the SRs to ``forward`` (the C-STORE SCU) if there is one.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrdet.classes import NO_FINDING
from cxrdet.dicomout.sr import ImageResult, build_sr
from cxrdet.dicomout.writer import SR_SUFFIX, classifier_from_row, sr_path
from cxrdet.dicomio.errors import BadDicomError
from cxrdet.dicomio.meta import open_header
from cxrdet.errors import InputFailure, failure_reason
from cxrdet.formats import atomic
from cxrdet.formats.failures import FailureLog, read_failures
from cxrdet.formats.image_level import image_level_frame, read_image_level, write_image_level
from cxrdet.inference.infer import Outputs, classify_batch, process_batch
from cxrdet.inference.predictor import Predictor
from cxrdet.inference.sources import DicomFolderSource, ImageSource


@dataclass(frozen=True)
class NodeDirs:
    """The folders and files of a node under ``out``."""

    out: Path

    @property
    def inbox(self) -> Path:
        return self.out / "inbox"

    @property
    def sr(self) -> Path:
        return self.out / "sr"

    @property
    def failed(self) -> Path:
        return self.out / "failed"

    @property
    def image_level(self) -> Path:
        return self.out / "image_level.csv"

    @property
    def errors(self) -> Path:
        return self.out / "listen.errors.csv"

    def make(self) -> "NodeDirs":
        for folder in (self.inbox, self.sr, self.failed):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def pending(self) -> list[str]:
        """Received images with no SR and not failed, oldest first (the restart queue)."""
        done = {p.stem for p in self.sr.glob(f"*{SR_SUFFIX}")} | {p.stem for p in self.failed.glob(f"*{SR_SUFFIX}")}
        files = [p for p in self.inbox.glob(f"*{SR_SUFFIX}") if not p.name.startswith(".")]  # .tmp: partial
        return [p.stem for p in sorted(files, key=lambda p: (p.stat().st_mtime, p.name)) if p.stem not in done]


class BatchSource(DicomFolderSource):
    """The DICOM-folder source of ``cxrdet infer`` over a given set of files (one batch)."""

    def __init__(self, paths: dict[str, Path], settings, with_features: bool) -> None:
        self.listing_failures = FailureLog()
        self.paths = dict(paths)
        self.settings = settings
        ImageSource.__init__(self, sorted(self.paths), settings.size, with_features)


@dataclass
class Pipeline:
    """The loaded prediction (``cxrdet infer``'s :class:`Predictor`) and the infer arguments
    ``process_batch`` reads (overlays, --conf, ...)."""

    predictor: Predictor  # detectors + gate + TTA/WBF settings
    settings: object  # CacheSettings of the detectors
    args: object  # argparse.Namespace with infer's fields
    classifiers: tuple | None = None  # (models, class names) of --classifier, as infer.load_classifiers
    device: object = None  # where the classifiers run

    @property
    def gate(self):
        return self.predictor.gate

    @property
    def with_features(self) -> bool:
        return self.predictor.wants_features


class Worker(threading.Thread):
    """Processes queued inbox files in batches until :meth:`stop`; never dies on one bad image."""

    def __init__(self, dirs: NodeDirs, pipeline: Pipeline, batch_size: int = 4, batch_wait: float = 0.5,
                 forward: Callable[[list[Path]], None] | None = None, log: Callable[[str], None] | None = None):
        super().__init__(name="cxrdet-worker", daemon=True)
        self.dirs, self.pipeline = dirs.make(), pipeline
        self.batch_size, self.batch_wait, self.forward = batch_size, batch_wait, forward
        self.log = log or (lambda m: print(f"listen: {m}", file=sys.stderr, flush=True))
        self.queue: queue.Queue[str] = queue.Queue()
        self._queued: set[str] = set()  # in the queue, not yet taken: a second copy is not queued
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.rows = _read_rows(self.dirs.image_level)
        self.failures = read_failures(self.dirs.errors) if self.dirs.errors.is_file() else FailureLog()
        self.processed = 0  # images done (SR written or failed) by this worker

    def submit(self, image_id: str) -> None:
        with self._lock:
            if image_id in self._queued:
                return
            self._queued.add(image_id)
        self.queue.put(image_id)

    def resume(self) -> int:
        """Queue the inbox files that have no SR (call before serving); returns how many."""
        pending = self.dirs.pending()
        for image_id in pending:
            self.submit(image_id)
        return len(pending)

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.is_set():
            batch = self._next_batch()
            if batch:
                try:
                    self.process(batch)
                except Exception as e:  # a bug must not kill the node: list the batch, keep going
                    for image_id in batch:
                        self._fail(image_id, f"processing failed: {failure_reason(e)}")
                    self._save_failures()

    def _next_batch(self) -> list[str]:
        try:
            batch = [self.queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        while len(batch) < self.batch_size:
            try:
                batch.append(self.queue.get(timeout=self.batch_wait))
            except queue.Empty:
                break
        with self._lock:
            self._queued.difference_update(batch)  # from now on a new copy is queued again
        return batch

    def process(self, ids: list[str]) -> None:
        """Detect, gate and report one batch of inbox files."""
        paths = {i: self.dirs.inbox / f"{i}{SR_SUFFIX}" for i in ids}
        source = BatchSource(paths, self.pipeline.settings, self.pipeline.with_features)
        samples = [source[k] for k in range(len(source))]
        ready: dict[str, tuple] = {}  # image_id -> (SR, image-level row, detections), written by _report

        def on_record(sample, dets, row) -> None:  # inside process_batch: a failure here lists the image
            ready[sample.image_id] = (self._build(paths[sample.image_id], dets, row), row, dets)

        out = Outputs(on_record=on_record)
        for s in samples:
            if s.error is not None:
                out.failures.add(s.image_id, s.error)
        good = [s for s in samples if s.error is None]
        if good:
            with torch.inference_mode():
                if self.pipeline.classifiers:  # probabilities first: record_image adds them to the row
                    good = classify_batch(good, self.pipeline.classifiers, self.pipeline.device, out)
                process_batch(good, self.pipeline.predictor, self.pipeline.args, out)
        self._report(ready, out.failures)

    def _build(self, path: Path, dets, row: dict):
        """The SR of one image (InputFailure when its header cannot carry one)."""
        try:
            header = open_header(path)
        except BadDicomError as e:
            raise InputFailure(f"re-reading its header for the SR failed: {e.reason}") from None
        gate = self.pipeline.gate
        low, high = (gate.low, gate.high) if gate else (None, None)
        return build_sr(header, dets, ImageResult.from_row(row, low, high, classifier_from_row(row)))

    def _report(self, ready: dict[str, tuple], failures: FailureLog) -> None:
        for image_id, reason in failures.rows:
            self._fail(image_id, reason)
        for image_id, (_, row, _) in ready.items():
            self.rows[image_id] = row
        if ready:
            write_image_level(self.dirs.image_level, image_level_frame(list(self.rows.values())))
        written = []
        for image_id, (sr, _, dets) in ready.items():
            with atomic.atomic_path(sr_path(self.dirs.sr, image_id)) as tmp:
                sr.save_as(tmp, enforce_file_format=True)
            written.append(sr_path(self.dirs.sr, image_id))
            self.log(f"{image_id}: {int((dets.class_ids != NO_FINDING).sum())} finding(s) -> {written[-1]}")
        self.processed += len(ready)
        self._save_failures()
        if written and self.forward is not None:
            try:
                self.forward(written)
            except Exception as e:  # the SRs stay on disk; the next images are still processed
                self.log(f"forwarding {len(written)} SR(s) failed: {failure_reason(e)}")

    def _fail(self, image_id: str, reason: str) -> None:
        self.failures.add(image_id, reason)
        self.processed += 1
        self.log(f"{image_id}: FAILED: {reason}")
        src = self.dirs.inbox / f"{image_id}{SR_SUFFIX}"
        if src.is_file():  # out of the inbox, so a restart does not retry it forever
            os.replace(src, self.dirs.failed / src.name)

    def _save_failures(self) -> None:
        self.failures.write_csv(self.dirs.errors)


def _read_rows(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    frame = read_image_level(path)
    return {str(r["image_id"]): r for r in frame.to_dict("records")}
