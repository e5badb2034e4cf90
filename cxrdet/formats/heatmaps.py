"""The raw heatmap file of ``cxrdet classify --cam-raw``: one HDF5 file, one group per image.

Layout (format ``cxrdet-heatmaps`` version 1)::

    /                 attrs: format, version, class_names (JSON list), method, models (JSON)
    /images/<n>       one group per image, n = 0, 1, ... in writing order; attrs:
                        image_id     the image id (ids are data, never HDF5 path names)
                        orig_hw      [rows, columns] of the original image
                        class_ids    [K] indices into class_names, one per heatmap
                        probability  [K] the classifier's probability of each of those classes
    /images/<n>/heatmaps  float16 [K, h, w] in [0, 1], at the cache size of the image
                        (same aspect ratio as the original)

Mapping to original pixels: with the continuous pixel convention of :mod:`cxrdet.boxes`, a
point ``(x, y)`` of a heatmap of size ``(h, w)`` is ``(x * columns / w, y * rows / h)`` in the
original; :func:`cxrdet.boxes.scale_boxes` with ``src_hw=(h, w)``, ``dst_hw=orig_hw`` maps boxes.
The file is written under a temporary name and renamed when complete.

Reading a file handed to us: libhdf5 loops forever on some damaged files instead of failing
(HDFGroup/hdf5 issue 1707; h5py does not work around it), and C code holding the GIL cannot be
interrupted in-process. So :func:`read_heatmaps` first walks the whole file (every attribute and
dataset it will read) in a child process with a time limit; a file that hangs there is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from cxrdet.errors import UserError

FORMAT = "cxrdet-heatmaps"
VERSION = 1
MAPPING = "x_orig = x * columns / w, y_orig = y * rows / h (continuous pixel coordinates)"
# what h5py and numpy raise on a damaged or foreign file: corrupt chunks (OSError), bad
# metadata (RuntimeError), missing or odd-typed members (KeyError, TypeError, ValueError)
H5_ERRORS = (OSError, RuntimeError, KeyError, TypeError, ValueError, AttributeError)
PROBE_SECONDS = 60.0  # a healthy file of 10,000 images is walked in a few seconds
# reads what read_heatmaps reads; errors are fine (the reader reports them), only a hang is refused
_PROBE = """
import sys, h5py
def walk(name, obj):
    for key in obj.attrs:
        obj.attrs[key]
    if isinstance(obj, h5py.Dataset):
        obj[()]
try:
    with h5py.File(sys.argv[1], "r") as f:
        for key in f.attrs:
            f.attrs[key]
        f.visititems(walk)
except Exception:
    pass
"""


@dataclass
class HeatmapRecord:
    """The heatmaps of one image (``heatmaps[k]`` explains class ``class_ids[k]``)."""

    image_id: str
    orig_hw: tuple[int, int]
    class_ids: list[int]
    probability: list[float]
    heatmaps: np.ndarray  # float32 [K, h, w] in [0, 1]


class HeatmapWriter:
    """Append images' heatmaps to ``path``; :meth:`close` publishes the file, :meth:`abort` drops it."""

    def __init__(self, path: str | os.PathLike, class_names: list[str], method: str, models: list) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.stem}.", suffix=".tmp.h5")
        os.close(fd)
        self._tmp = Path(tmp)
        self._f = h5py.File(self._tmp, "w")
        self._f.attrs.update({"format": FORMAT, "version": VERSION, "class_names": json.dumps(list(class_names)),
                              "method": method, "models": json.dumps(models), "mapping": MAPPING})
        self._images = self._f.create_group("images")
        self.count = 0

    def add(self, record: HeatmapRecord) -> None:
        g = self._images.create_group(str(self.count))
        g.attrs.update({"image_id": record.image_id, "orig_hw": np.asarray(record.orig_hw, dtype=np.int64),
                        "class_ids": np.asarray(record.class_ids, dtype=np.int64),
                        "probability": np.asarray(record.probability, dtype=np.float64)})
        g.create_dataset("heatmaps", data=np.asarray(record.heatmaps, dtype=np.float16), compression="gzip",
                         compression_opts=4)
        self.count += 1

    def close(self) -> Path:
        self._f.close()
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self._f.close()
        self._tmp.unlink(missing_ok=True)


def _record(path: Path, name: str, g: h5py.Group, n_classes: int) -> HeatmapRecord:
    where = f"{path}: image group {name}"
    try:
        maps = np.asarray(g["heatmaps"][()], dtype=np.float32)
        ids = [int(c) for c in np.atleast_1d(g.attrs["class_ids"])]
        prob = [float(p) for p in np.atleast_1d(g.attrs["probability"])]
        rows, cols = (int(v) for v in np.asarray(g.attrs["orig_hw"]).reshape(2))
        image_id = str(g.attrs["image_id"])
    except H5_ERRORS as e:
        raise UserError(f"{where} is damaged or incomplete ({type(e).__name__}: {e}); expected heatmaps, image_id, "
                        "orig_hw, class_ids, probability as `cxrdet classify --cam-raw` writes") from None
    if maps.ndim != 3 or len(ids) != maps.shape[0] or len(prob) != len(ids):
        raise UserError(f"{where}: {maps.shape} heatmaps for {len(ids)} class ids and {len(prob)} probabilities; "
                        "expected one [h, w] heatmap per class id")
    if any(not 0 <= c < n_classes for c in ids) or rows <= 0 or cols <= 0:
        raise UserError(f"{where}: class ids {ids} outside 0..{n_classes - 1} or original size {rows}x{cols}")
    if not np.isfinite(maps).all() or not all(0.0 <= q <= 1.0 for q in prob):
        raise UserError(f"{where}: heatmaps hold NaN or infinity, or probabilities {prob} are not in [0, 1]")
    return HeatmapRecord(image_id, (rows, cols), ids, prob, maps)


def probe(path: Path, seconds: float | None = None) -> None:
    """Refuse a file that libhdf5 cannot walk within ``seconds`` (default :data:`PROBE_SECONDS`)."""
    seconds = PROBE_SECONDS if seconds is None else seconds
    try:
        subprocess.run([sys.executable, "-c", _PROBE, str(path)], timeout=seconds, capture_output=True, check=False)
    except subprocess.TimeoutExpired:
        raise UserError(f"{path}: libhdf5 did not finish reading this file in {seconds:g} s (it loops on some damaged "
                        "HDF5 files); the file is damaged: write it again with `cxrdet classify --cam-dir DIR --cam-raw`") from None


def read_heatmaps(path: str | os.PathLike) -> tuple[list[str], Iterator[HeatmapRecord]]:
    """``(class_names, records)`` of a heatmap file, checked group by group as it is read."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"heatmap file {path} does not exist; write it with `cxrdet classify --cam-dir DIR --cam-raw`")
    probe(path)
    try:
        f = h5py.File(path, "r")
    except H5_ERRORS as e:
        raise UserError(f"{path} is not an HDF5 file ({e}); expected the heatmaps.h5 of `classify --cam-raw`") from None
    try:
        fmt = f.attrs.get("format")
        names = json.loads(f.attrs["class_names"]) if fmt == FORMAT and "images" in f else None
    except H5_ERRORS:
        fmt, names = "unreadable", None
    if not (isinstance(fmt, str) and fmt == FORMAT) or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        f.close()
        raise UserError(f"{path} is not a cxrdet heatmap file (format {fmt!r}, class_names {type(names).__name__}; "
                        f"expected format {FORMAT!r} with a JSON list of class names)")

    def records() -> Iterator[HeatmapRecord]:
        with f:
            try:
                group = f["images"]
                members = sorted(group, key=lambda k: (len(k), k))
            except H5_ERRORS as e:
                raise UserError(f"{path}: its image groups cannot be listed ({type(e).__name__}: {e})") from None
            for name in members:
                try:
                    member = group[name]
                except H5_ERRORS as e:
                    raise UserError(f"{path}: image group {name} cannot be opened ({type(e).__name__}: {e})") from None
                yield _record(path, name, member, len(names))

    return names, records()
