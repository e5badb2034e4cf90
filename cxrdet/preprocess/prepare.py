"""``cxrdet prepare``: DICOM folder -> HDF5 cache + META.csv + pixel-feature CSV + errors CSV.

Worker processes decode and resize; the parent alone writes HDF5 (h5py handles are not
shareable across processes). Finished images are skipped on a rerun; a killed run resumes
from ``<cache>.partial``. Bad files go to the errors CSV and the exit code is 3.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import sys
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from tqdm import tqdm

from cxrdet.dicomio.intensity import VOI_CHOICES
from cxrdet.dicomio.meta import image_id_from_path
from cxrdet.errors import UserError
from cxrdet.formats.failures import FailureLog, errors_path
from cxrdet.preprocess.listing import list_dicoms, parse_shard
from cxrdet.preprocess.cache import (CacheReader, CacheSettings, CacheWriter, check_settings,
                                     partial_path)
from cxrdet.preprocess.outputs import check_output_files
from cxrdet.preprocess.pipeline import init_worker, prepare_job
from cxrdet.preprocess.tables import features_path, write_tables


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Convert a folder of DICOM files (*.dicom, *.dcm) into an HDF5 image cache "
        "(long side --size, windowed, bright bone), a metadata CSV and a pixel-feature CSV. "
        "Reruns resume; bad files are listed in the errors CSV (exit code 3).")
    p.add_argument("--dicom-dir", required=True, type=Path, help="folder of .dicom/.dcm files")
    p.add_argument("--out", required=True, type=Path, help="HDF5 cache to write (e.g. train_1024.h5)")
    p.add_argument("--meta-out", required=True, type=Path, help="metadata CSV (one row per image)")
    p.add_argument("--size", type=int, default=CacheSettings.size,
                   help="long side of cached images in pixels (default %(default)s)")
    p.add_argument("--voi", choices=VOI_CHOICES, default=CacheSettings.voi,
                   help="intensity window: auto = VOI LUT, else window centre/width, else "
                   "min-max; voi_lut/window fall back to min-max where a file lacks them")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="decoding processes; 0 or 1 decodes in this process (default %(default)s)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="process only shard I of N (0-based) of the sorted image ids, e.g. 0/4; "
                   "combine shard caches with `cxrdet merge-cache`")
    p.add_argument("--errors-out", type=Path, default=None,
                   help="errors CSV (default: <cache stem>.errors.csv beside the cache)")
    p.add_argument("--features-out", type=Path, default=None,
                   help="pixel-feature CSV (default: <meta stem>_pixel_features.csv beside META)")
    p.add_argument("--exact-j2k", action="store_true",
                   help="always decode JPEG 2000 at full resolution: a lossless file then "
                   "caches exactly like its uncompressed twin, at ~3.5x the decode time. "
                   "Default: decode at the coarsest wavelet level still >= 1.4 x --size, faster "
                   "but about 1 grey level off on average (tested maxima ~20 at sharp edges); "
                   "min-max windowed files are always decoded in full. A cache keeps its mode: "
                   "resuming or merging with the other one is refused")
    return p


def _results(paths: list[Path], settings: CacheSettings, workers: int) -> Iterator[tuple]:
    jobs = [(p, settings) for p in paths]
    if workers <= 1 or len(jobs) <= 1:
        init_worker()
        yield from map(prepare_job, jobs)
        return
    # spawn: no fork of a parent holding an open HDF5 file, tqdm's thread or OpenCV's pool.
    # ProcessPoolExecutor (not Pool) so a crashed worker raises instead of hanging the run.
    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker)
    try:
        pending: set = set()
        queue = iter(jobs)
        for job in itertools.islice(queue, 4 * workers):  # bounded: results are ~1 MB each
            pending.add(pool.submit(prepare_job, job))
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
                job = next(queue, None)
                if job is not None:
                    pending.add(pool.submit(prepare_job, job))
    except BrokenProcessPool:
        raise UserError("a decoding worker process died (out of memory, or a decoder crashed on "
                        "a file); finished images are kept and a rerun resumes: rerun with "
                        "--workers 1 to see which file it is") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # an interrupted run stops promptly


def run_prepare(dicom_dir: Path, out: Path, settings: CacheSettings, workers: int = 1,
                shard: tuple[int, int] = (0, 1), failures: FailureLog | None = None) -> int:
    """Fill ``out`` with the shard's images; return how many were newly written.

    A finished ``out`` is reopened only when a new image has decoded: files that fail (and are
    retried on every rerun) never rename it, so a training run reading it is never disturbed.
    """
    failures = FailureLog() if failures is None else failures
    paths = list_dicoms(dicom_dir, shard, failures)
    finished = _finished_ids(out, settings)
    writer = CacheWriter(out, settings) if finished is None else None  # resume or start now
    done = finished if writer is None else writer.done
    todo = [p for p in paths if image_id_from_path(p) not in done]
    written = 0
    results = _results(todo, settings, workers)  # a generator: nothing runs until iterated
    try:
        bar = tqdm(total=len(todo), unit="img", desc="prepare", file=sys.stderr,
                   disable=None, dynamic_ncols=True)
        for name, prepared, reason in results:
            if prepared is None:
                failures.add(name, reason)
            else:
                if writer is None:
                    writer = CacheWriter(out, settings)  # first new image: reopen only now
                writer.write(prepared.image_id, prepared.image, prepared.orig_hw,
                             prepared.meta, prepared.features)
                written += 1
            bar.update(1)
        bar.close()
    except BaseException:
        results.close()  # stop the workers before the file is closed
        if writer is not None:
            writer.close()  # keep the .partial for the rerun to resume
        raise
    if writer is not None:
        writer.finish()
    return written


def _finished_ids(out: Path, settings: CacheSettings) -> set[str] | None:
    """Image ids of a finished cache at ``out`` (None when there is none to keep untouched);
    UserError when it was made with other settings, JPEG 2000 decode mode included."""
    if not out.exists() or partial_path(out).exists():
        return None
    with CacheReader(out) as finished:
        check_settings(out, finished.settings, settings, build=True)
        return set(finished.ids)


def main(args: argparse.Namespace) -> int:
    try:
        settings = CacheSettings(size=args.size, voi=args.voi, j2k_reduce=not args.exact_j2k)
    except UserError as e:
        raise UserError(f"{e} (flags --size, --voi)") from None
    shard = parse_shard(args.shard)
    errors_out = args.errors_out or errors_path(args.out)
    features_out = args.features_out or features_path(args.meta_out)
    check_output_files({"--out": args.out, "--meta-out": args.meta_out,
                        "--errors-out": errors_out, "--features-out": features_out})
    failures = FailureLog()
    written = run_prepare(args.dicom_dir, args.out, settings, args.workers, shard, failures)
    with CacheReader(args.out, expect=settings) as cache:
        write_tables(cache, args.meta_out, features_out)
        total = len(cache)
    print(f"prepare: {written} new, {total} images in {args.out}; metadata {args.meta_out}, "
          f"features {features_out}", file=sys.stderr)
    return failures.report(errors_out)
