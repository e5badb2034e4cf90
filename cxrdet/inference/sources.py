"""Inference inputs as torch Datasets: a DICOM folder, an HDF5 cache, or PNGs + a sizes CSV.

Each source yields a :class:`Sample` per image: the cache-size uint8 image the detector was
trained on (long side == the detector's cache size, aspect ratio kept), the ORIGINAL DICOM size
``(rows, columns)`` to map boxes back to, the metadata row and the pixel features for the gate.
A file that cannot be read gives a Sample with ``error`` set instead of raising, so one bad
image never stops a DataLoader worker; the command lists it in the errors CSV.

- DICOM folder: the exact ``cxrdet prepare`` code path (:func:`preprocess.pipeline.preprocess_file`).
- HDF5 cache: :class:`preprocess.cache.CacheReader`, which refuses a cache made with other
  settings; metadata and pixel features come from the rows prepare stored with each image.
- PNG folder: the popular resized-PNG releases of this dataset (any size, often squashed to a
  square) plus their CSV ``image_id,dim0,dim1`` (dim0 = rows = height, dim1 = columns = width).
  Each PNG is resized to the cache size of its original (area interpolation, as prepare does),
  so the detector sees the aspect ratio it was trained on. An id with a PNG but no size row, or
  a size row but no PNG, is a failed image (listed in the errors CSV), not a skipped one.
"""

from __future__ import annotations

import io
import math
from abc import ABC, abstractmethod
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxrdet.boxes import HW, resized_hw
from cxrdet.errors import InputFailure, UserError, failure_reason
from cxrdet.formats.csvrows import read_text
from cxrdet.formats.failures import FailureLog
from cxrdet.preprocess.listing import list_dicoms, parse_shard, select_shard  # noqa: F401 (infer's API)

class Sample(NamedTuple):
    """One input image, ready for the detector (``image`` is None when ``error`` is set)."""

    image_id: str
    image: np.ndarray | None  # uint8 [h, w] at the detector's cache size
    orig_hw: HW | None  # original DICOM (rows, columns)
    meta: dict  # META.csv row (as much as the input tells)
    features: dict  # px_* pixel features for the gate (empty when not asked for)
    error: str | None = None


def collate_samples(batch: list[Sample]) -> list[Sample]:
    """DataLoader collate: images differ in size, so a batch stays a list of Samples.

    Images travel as torch tensors: from a worker process, tensors cross through shared memory,
    numpy arrays through a pickled byte copy (about 1 ms per 1024 px image, which a GPU notices).
    :func:`uncollate` turns them back into numpy arrays (zero-copy views).
    """
    return [s if s.image is None else s._replace(image=torch.from_numpy(s.image)) for s in batch]


def uncollate(batch: list[Sample]) -> list[Sample]:
    """The batch of :func:`collate_samples` with numpy images again."""
    return [s if s.image is None else s._replace(image=s.image.numpy()) for s in batch]


class ImageSource(Dataset, ABC):
    """Common part: an ordered id list and error capture; subclasses implement ``load``."""

    def __init__(self, ids: Sequence[str], size: int, with_features: bool) -> None:
        self.ids = list(ids)
        self.size = int(size)
        self.with_features = with_features

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        try:
            return self.load(image_id)
        except Exception as e:  # one unreadable image must not stop the run; it gets listed
            # (settings are checked when the source is built, so what fails here is the image;
            # an exception escaping a DataLoader worker would also come back with a traceback)
            return Sample(image_id, None, None, {}, {}, failure_reason(e))

    @abstractmethod
    def load(self, image_id: str) -> Sample:
        """The Sample of one image; raises on an unreadable image."""

    def restrict(self, ids: Sequence[str]) -> "ImageSource":
        """Keep only ``ids`` (in the given order), e.g. one shard."""
        self.ids = list(ids)
        return self

    def _features(self, image: np.ndarray) -> dict:
        if not self.with_features:
            return {}
        from cxrdet.preprocess.features import pixel_features

        return dict(pixel_features(image))


class DicomFolderSource(ImageSource):
    """DICOM files preprocessed on the fly exactly as ``cxrdet prepare`` does (same file list,
    same :func:`preprocess_file`); files prepare would refuse (duplicate ids) become failures."""

    def __init__(self, folder: str | os.PathLike, settings, with_features: bool = True) -> None:
        from cxrdet.dicomio.meta import image_id_from_path

        self.listing_failures = FailureLog()
        paths = list_dicoms(Path(folder), (0, 1), self.listing_failures)
        self.paths = {image_id_from_path(p): p for p in paths}
        self.settings = settings
        super().__init__(sorted(self.paths), settings.size, with_features)

    def load(self, image_id: str) -> Sample:
        return dicom_sample(image_id, self.paths[image_id], self.settings, self.with_features)


def dicom_sample(image_id: str, path: str | os.PathLike, settings, with_features: bool) -> Sample:
    """One DICOM file as a Sample, through the exact ``cxrdet prepare`` code path."""
    from cxrdet.preprocess.pipeline import preprocess_file

    prepared = preprocess_file(path, settings, with_features=with_features)
    orig_hw = (int(prepared.orig_hw[0]), int(prepared.orig_hw[1]))
    meta = {**prepared.meta, "image_id": image_id}  # the file name may not be the id (uploads)
    return Sample(image_id, prepared.image, orig_hw, meta, dict(prepared.features))


class CacheSource(ImageSource):
    """Images of an HDF5 cache (``cxrdet prepare`` output) with the metadata and pixel-feature
    rows prepare stored beside each image (the same rows as its META.csv and feature CSV)."""

    def __init__(self, path: str | os.PathLike, settings, with_features: bool = True, with_meta: bool = True) -> None:
        from cxrdet.preprocess.cache import CacheReader

        self.reader = CacheReader(path, expect=settings)
        ids = list(self.reader.ids)
        # one HDF5 attribute read per image (~0.2 ms): skipped by callers that never look at it (classify)
        self.meta = dict(zip(ids, self.reader.rows("meta"))) if with_meta else {}
        self.features = dict(zip(ids, self.reader.rows("features"))) if with_features else {}
        super().__init__(ids, settings.size, with_features)

    def load(self, image_id: str) -> Sample:
        image, attrs = self.reader.read(image_id)
        orig_hw = (int(attrs["orig_height"]), int(attrs["orig_width"]))
        meta = {"image_id": image_id, "rows": orig_hw[0], "columns": orig_hw[1], **self.meta.get(image_id, {})}
        features = self.features.get(image_id) or self._features(image)
        return Sample(image_id, np.asarray(image, dtype=np.uint8), orig_hw, meta, dict(features))


def read_png_sizes(path: str | os.PathLike) -> dict[str, HW]:
    """The sizes CSV ``image_id,dim0,dim1`` -> ``{image_id: (rows, columns)}``, validated."""
    text = read_text(path)  # UTF-8 checked (line named), BOM dropped
    try:
        df = pd.read_csv(io.StringIO(text), dtype={"image_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"cannot read --png-sizes {path}: {e}") from e
    missing = [c for c in ("image_id", "dim0", "dim1") if c not in df.columns]
    if missing:
        raise UserError(
            f"PNG sizes CSV {path}: expected columns image_id,dim0,dim1 (dim0 = rows = original height, "
            f"dim1 = columns = original width), missing {','.join(missing)}"
        )
    sizes: dict[str, HW] = {}
    for line, (image_id, d0, d1) in enumerate(df[["image_id", "dim0", "dim1"]].itertuples(index=False), start=2):
        dims = (_positive_int(d0), _positive_int(d1))
        if None in dims:
            raise UserError(f"PNG sizes CSV {path} line {line}: dim0/dim1 must be positive integers, got {d0!r},{d1!r}")
        if image_id in sizes:
            raise UserError(f"PNG sizes CSV {path} line {line}: image_id {image_id!r} appears twice")
        sizes[str(image_id)] = dims  # type: ignore[assignment]
    return sizes


def _positive_int(value) -> int | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) and f >= 1 and f == int(f) else None


def png_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """A decoded PNG (8/16-bit, grey/BGR/BGRA) -> uint8 grey.

    16-bit PNGs are min-max scaled to 0..255 (the "min-max" VOI of prepare): releases store
    either the full 16-bit range or the 12-14 bits of the detector, and min-max handles both.
    """
    if pixels.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if pixels.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        pixels = cv2.cvtColor(pixels, code)
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype != np.uint16:
        raise ValueError(f"PNG pixel type {pixels.dtype} unsupported; expected 8- or 16-bit")
    lo, hi = float(pixels.min()), float(pixels.max())
    scaled = (pixels.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1.0))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def grey_sample(image_id: str, grey: np.ndarray, orig_hw: HW, size: int, with_features: bool) -> Sample:
    """A uint8 grey picture of an original of ``orig_hw`` pixels as a Sample: resized to the
    cache size of that original (area interpolation, as prepare does), so the detector sees the
    aspect ratio it was trained on."""
    h, w = resized_hw(orig_hw, size)
    if grey.shape != (h, w):
        grey = cv2.resize(grey, (w, h), interpolation=cv2.INTER_AREA)
    meta = {"image_id": image_id, "rows": orig_hw[0], "columns": orig_hw[1]}
    features = {}
    if with_features:
        from cxrdet.preprocess.features import pixel_features

        features = dict(pixel_features(grey))
    return Sample(image_id, grey, orig_hw, meta, features)


class PngFolderSource(ImageSource):
    """``<image_id>.png`` files plus the original sizes.

    The ids are those of the PNG files AND of the sizes CSV: a PNG without a size row and a size
    row without a PNG are both failed images (listed, exit 3), never silently skipped, since
    either means the input is not the set of images the user thinks it is.
    """

    def __init__(self, folder: str | os.PathLike, sizes_csv: str | os.PathLike, size: int,
                 with_features: bool = True) -> None:
        root = Path(folder)
        if not root.is_dir():
            raise UserError(f"PNG folder {root} is not a folder")
        self.root = root
        self.paths = {p.stem: p for p in sorted(root.glob("*")) if p.suffix.lower() == ".png" and p.is_file()}
        if not self.paths:
            raise UserError(f"PNG folder {root} holds no .png files (expected <image_id>.png)")
        self.sizes = read_png_sizes(sizes_csv)
        self.sizes_csv = Path(sizes_csv)
        super().__init__(sorted(set(self.paths) | set(self.sizes)), size, with_features)

    def load(self, image_id: str) -> Sample:
        grey = self._read_png(image_id)  # readability first: a corrupt PNG is reported as such
        if image_id not in self.sizes:
            raise InputFailure(f"no row for this image in {self.sizes_csv} (needs image_id,dim0,dim1 "
                               "of the original DICOM size)")
        return grey_sample(image_id, grey, self.sizes[image_id], self.size, self.with_features)

    def _read_png(self, image_id: str) -> np.ndarray:
        path = self.paths.get(image_id)
        if path is None:
            raise InputFailure(f"listed in {self.sizes_csv} but there is no {self.root / image_id}.png")
        return read_png(path)


def read_png(path: str | os.PathLike) -> np.ndarray:
    """A PNG (or any image OpenCV decodes) as uint8 grey; InputFailure naming ``path`` if not."""
    # np.fromfile + imdecode: cv2.imread cannot open non-ASCII paths on every platform
    raw = np.fromfile(path, dtype=np.uint8)
    pixels = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED) if raw.size else None
    if pixels is None:
        raise InputFailure(f"{path} is not a readable PNG")
    try:
        return png_to_uint8(pixels)
    except ValueError as e:
        raise InputFailure(f"{path}: {e}") from None
