"""The HDF5 image cache: settings, atomic resumable writer, fork-safe reader.

Layout: ``/images/<image_id>`` uint8 ``[h, w]`` with attrs ``orig_height``, ``orig_width``
(and ``meta``/``features``: the image's META.csv and feature rows as JSON, so the CSVs can be
rebuilt after a resume or a merge). Root attrs: ``format``, ``format_version``, ``size``,
``voi``, ``j2k_reduce``, ``complete``.

Atomicity: a writer works on ``<path>.partial`` and renames it to ``<path>`` only after setting
``complete``; ``<path>`` therefore exists only when finished. A killed run leaves the
``.partial`` file, which the next run resumes (or restarts, when HDF5 cannot open it).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cxrdet.dicomio.intensity import VOI_CHOICES
from cxrdet.errors import UserError

FORMAT = "cxrdet-image-cache"
FORMAT_VERSION = 1
PARTIAL_SUFFIX = ".partial"


MIN_SIZE, MAX_SIZE = 16, 8192  # below 16 px nothing is visible; VinBigData originals ~3k px


@dataclass(frozen=True)
class CacheSettings:
    """How cached pixels are made. A cache is read only with equal ``size`` and ``voi``, and
    resumed or merged only when ``j2k_reduce`` matches too."""

    size: int = 1024  # long side in px: top VinBigData solutions trained at 512-1024
    voi: str = "auto"  # VOI LUT > window > min-max: what a radiologist's viewer shows
    j2k_reduce: bool = True  # JPEG 2000 decoded at the coarsest level >= size (tested tolerance)

    def __post_init__(self) -> None:
        if not MIN_SIZE <= int(self.size) <= MAX_SIZE:
            raise UserError(f"cache size must be between {MIN_SIZE} and {MAX_SIZE} pixels (the long "
                            f"side of cached images; VinBigData models use 512-1024), got {self.size}")
        if self.voi not in VOI_CHOICES:
            raise UserError(f"cache windowing (voi) must be one of {', '.join(VOI_CHOICES)}, got {self.voi!r}")

    def identity(self) -> dict[str, Any]:
        """What a consumer of the cache relies on (JPEG 2000 decode mode is within tolerance)."""
        return {"size": int(self.size), "voi": str(self.voi)}

    def build_identity(self) -> dict[str, Any]:
        """``identity`` plus the JPEG 2000 decode mode: one cache never mixes reduced and exact
        decodes, so resuming or merging compares this."""
        return {**self.identity(), "j2k_reduce": bool(self.j2k_reduce)}

    def flags(self) -> str:
        """The ``cxrdet prepare`` flags that make these settings."""
        return f"--size {self.size} --voi {self.voi}" + ("" if self.j2k_reduce else " --exact-j2k")

    @classmethod
    def from_attrs(cls, attrs: Any) -> "CacheSettings":
        # caches from before reduced decoding existed lack the attr: they were decoded exactly
        return cls(size=int(attrs["size"]), voi=str(attrs["voi"]),
                   j2k_reduce=bool(attrs.get("j2k_reduce", False)))


def partial_path(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}{PARTIAL_SUFFIX}")


def _check_format(f: h5py.File, path: Path) -> CacheSettings:
    if f.attrs.get("format") != FORMAT or "images" not in f:
        raise UserError(f"{path} is not a cxrdet image cache (no '{FORMAT}' format attribute); "
                        "make one with `cxrdet prepare`")
    version = int(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise UserError(f"{path} has cache format version {version}, expected {FORMAT_VERSION}; "
                        "rebuild it with this version's `cxrdet prepare`")
    return CacheSettings.from_attrs(f.attrs)


def check_settings(path: Path, found: CacheSettings, expect: CacheSettings | None,
                   build: bool = False) -> None:
    """UserError when a cache was made with other settings than ``expect``.

    ``build=True`` (resuming or merging) also compares the JPEG 2000 decode mode.
    """
    if expect is None:
        return
    have, want = (found.build_identity(), expect.build_identity()) if build else \
        (found.identity(), expect.identity())
    if have == want:
        return
    if build:
        fix = (f"to add to it, rerun with the cache's own flags `{found.flags()}`; for "
               f"`{expect.flags()}` write a new --out (j2k_reduce=False is --exact-j2k: reduced "
               "and exact JPEG 2000 decodes never mix in one cache)")
    else:
        fix = (f"rerun `cxrdet prepare` with --size {expect.size} --voi {expect.voi} into a new "
               "file, or ask for the cache's settings")
    raise UserError(f"{path} was made with settings {have} but {want} were asked for; {fix}")


class CacheReader:
    """Read a finished cache. The HDF5 handle opens lazily and again in each new process.

    DataLoader workers (fork or spawn) each get their own handle: h5py handles must not be
    shared across processes, so the handle is tied to the pid that opened it and never pickled.
    """

    def __init__(self, path: str | os.PathLike, expect: CacheSettings | None = None):
        self.path = Path(path)
        if not self.path.exists():
            if partial_path(self.path).exists():
                raise UserError(
                    f"{self.path} is incomplete: only {partial_path(self.path).name} exists (a "
                    "prepare run was interrupted); rerun the same `cxrdet prepare` to finish it"
                )
            raise UserError(f"cache {self.path} not found; make it with `cxrdet prepare`")
        try:
            with h5py.File(self.path, "r") as f:
                self.settings = _check_format(f, self.path)
                if not bool(f.attrs.get("complete", False)):
                    raise UserError(f"{self.path} is marked incomplete; rerun `cxrdet prepare` "
                                    "with the same arguments to finish it")
                self.ids: list[str] = sorted(f["images"].keys())
        except OSError as e:
            raise UserError(f"{self.path} is not a readable HDF5 file ({e}); delete it and "
                            "rerun `cxrdet prepare`") from None
        check_settings(self.path, self.settings, expect)
        self._id_set = set(self.ids)
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._images: h5py.Group | None = None  # the "images" group of _h5, looked up once per handle

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            # a handle inherited through fork belongs to the parent: drop it, never close it
            self._h5, self._pid = h5py.File(self.path, "r"), os.getpid()
            self._images = self._h5["images"]
        return self._h5

    def _dataset(self, image_id: str) -> h5py.Dataset:
        if image_id not in self._id_set:
            raise KeyError(f"image id {image_id!r} is not in cache {self.path}")
        self._file()
        return self._images[image_id]

    def read(self, image_id: str) -> tuple[np.ndarray, dict[str, int]]:
        """``(uint8 [h, w] image, {"orig_height", "orig_width"})``."""
        ds = self._dataset(image_id)
        return ds[()], {"orig_height": int(ds.attrs["orig_height"]),
                        "orig_width": int(ds.attrs["orig_width"])}

    def orig_hw(self, image_id: str) -> tuple[int, int]:
        """Original DICOM ``(Rows, Columns)`` of an image."""
        attrs = self._dataset(image_id).attrs
        return int(attrs["orig_height"]), int(attrs["orig_width"])

    def cache_hw(self, image_id: str) -> tuple[int, int]:
        """Cached ``(h, w)`` without reading the pixels."""
        shape = self._dataset(image_id).shape
        return int(shape[0]), int(shape[1])

    def rows(self, attr: str) -> list[dict[str, Any]]:
        """The stored per-image JSON rows (``"meta"`` or ``"features"``), in id order."""
        images = self._file()["images"]
        return [json.loads(images[i].attrs.get(attr, "{}")) for i in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._id_set

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_h5"], state["_pid"] = None, None  # spawn workers reopen the file themselves
        state["_images"] = None
        return state

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5, self._pid = None, None
        self._images = None

    def __enter__(self) -> "CacheReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CacheWriter:
    """Single-process writer to ``<path>.partial``; ``finish()`` marks it complete and renames.

    Opening resumes: an existing ``.partial`` with the same settings is continued (images it
    holds are in ``done``); one HDF5 cannot open is replaced with a warning; one another
    process holds (HDF5 file lock) is refused; a finished ``<path>`` is reopened for additions
    (refused, and left in place, while another process has it open). Settings, including the
    JPEG 2000 decode mode, must match the file's.
    Flushing after every image (``flush_every=1``; no fsync, cheap next to a decode) keeps a
    SIGKILLed run's partial file readable, so its images survive.
    """

    def __init__(self, path: str | os.PathLike, settings: CacheSettings, flush_every: int = 1):
        self.path, self.settings = Path(path), settings
        self.partial = partial_path(self.path)
        self.flush_every, self._since_flush = flush_every, 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self._open()
        self.done: set[str] = set(self._f["images"].keys())

    def _open(self) -> h5py.File:
        if self.path.exists() and not self.partial.exists():
            return self._reopen_finished()
        if self.partial.exists():
            f = self._resume_partial()
            if f is not None:
                return f
        f = h5py.File(self.partial, "w")
        f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "complete": False,
                        **asdict(self.settings)})
        f.create_group("images")
        return f

    def _reopen_finished(self) -> h5py.File:
        """Open a finished cache for additions, renamed to ``.partial`` (no longer complete).

        HDF5's exclusive lock is taken BEFORE the rename: a cache that another process has
        open (training reading it) is refused and keeps its name.
        """
        try:
            f = h5py.File(self.path, "a")
        except BlockingIOError:
            raise UserError(f"{self.path} is open in another process (a training or inference "
                            "run reading it, or another prepare); the finished cache was left "
                            "as it is: rerun when that process has finished") from None
        except OSError as e:
            raise UserError(f"{self.path} is not a readable HDF5 file ({e}); delete it and "
                            "rerun `cxrdet prepare`") from None
        try:
            check_settings(self.path, _check_format(f, self.path), self.settings, build=True)
        except UserError:
            f.close()
            raise
        os.replace(self.path, self.partial)  # the open handle (and its lock) follows the file
        f.attrs["complete"] = False
        f.flush()
        return f

    def _resume_partial(self) -> h5py.File | None:
        """The ``.partial`` file opened to continue, or None (deleted) when HDF5 cannot read it."""
        try:
            f = h5py.File(self.partial, "a")
        except BlockingIOError:  # HDF5's file lock: not corrupt, in use
            raise UserError(f"{self.partial} is being written by another process; wait for "
                            "that `cxrdet prepare` to finish (or stop it) and rerun") from None
        except OSError as e:
            warnings.warn(f"{self.partial} is corrupt ({e}); starting it again", stacklevel=4)
            self.partial.unlink()
            return None
        try:
            check_settings(self.partial, _check_format(f, self.partial), self.settings, build=True)
        except UserError:
            f.close()
            raise
        _drop_unfinished(f)
        f.attrs["complete"] = False
        return f

    def write(self, image_id: str, image: np.ndarray, orig_hw: tuple[int, int],
              meta: dict[str, Any] | None = None, features: dict[str, float] | None = None) -> None:
        """Store one image (replacing an earlier copy of the same id)."""
        if image.dtype != np.uint8 or image.ndim != 2:
            raise ValueError(f"cache images are uint8 [h, w], got {image.dtype} {image.shape}")
        images = self._f["images"]
        if image_id in images:
            del images[image_id]
        ds = images.create_dataset(image_id, data=image)
        ds.attrs["meta"] = json.dumps(meta or {}, default=_json_default)
        ds.attrs["features"] = json.dumps(features or {}, default=_json_default)
        # written last: a dataset without orig_* was cut short and is redone on resume
        ds.attrs["orig_height"], ds.attrs["orig_width"] = int(orig_hw[0]), int(orig_hw[1])
        self.done.add(image_id)
        self._since_flush += 1
        if self._since_flush >= self.flush_every:
            self._f.flush()
            self._since_flush = 0

    def copy_from(self, src: h5py.Dataset, image_id: str) -> None:
        """Copy a finished image dataset (pixels and attrs) from another cache."""
        self._f["images"].copy(src, image_id)
        self.done.add(image_id)

    def finish(self) -> Path:
        """Mark complete, close, and atomically move the file to its final name."""
        self._f.attrs["complete"] = True
        self._f.attrs["n_images"] = len(self.done)
        self._f.close()
        os.replace(self.partial, self.path)
        return self.path

    def close(self) -> None:
        """Close without finishing (an interrupted run): the ``.partial`` file stays resumable."""
        if self._f.id.valid:
            self._f.flush()
            self._f.close()


def _drop_unfinished(f: h5py.File) -> None:
    images = f["images"]
    for image_id in list(images.keys()):
        attrs = images[image_id].attrs
        if "orig_height" not in attrs or "orig_width" not in attrs:
            del images[image_id]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in cache metadata")
