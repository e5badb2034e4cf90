"""``cxrdet merge-cache``: combine shard caches into one (and rebuild its CSVs).

Shards made with ``cxrdet prepare --shard i/n`` on several machines are merged by copying
their image datasets (pixels and attrs) into one new cache, written atomically. Mixed settings
(size, windowing, JPEG 2000 decode mode) are refused; an image id present in several shards
must have identical pixels. The merged META.csv / feature CSV are rebuilt from the per-image
rows stored in the caches, which is the same as concatenating the shards' CSVs and sorting by
image_id.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np

from cxrdet.errors import UserError
from cxrdet.preprocess.cache import CacheReader, CacheWriter, partial_path
from cxrdet.preprocess.outputs import check_output_files
from cxrdet.preprocess.tables import features_path, write_tables


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Combine shard caches from `cxrdet prepare --shard i/n` into one cache. "
        "All shards must have the same --size/--voi/--exact-j2k; an image in several shards "
        "must be identical. Pass --meta-out to write the merged metadata/feature CSVs.")
    p.add_argument("shards", nargs="+", type=Path, help="shard caches (.h5) to combine")
    p.add_argument("--out", required=True, type=Path, help="merged cache to write")
    p.add_argument("--meta-out", type=Path, default=None,
                   help="also write the merged metadata CSV (and <stem>_pixel_features.csv)")
    p.add_argument("--features-out", type=Path, default=None,
                   help="merged pixel-feature CSV (default: beside --meta-out)")
    return p


def merge_caches(shards: list[Path], out: Path) -> int:
    """Write the union of ``shards`` to ``out``; return the number of images."""
    if out.exists() or partial_path(out).exists():
        raise UserError(f"{out} already exists; choose a new --out or delete it first")
    if out.resolve() in {s.resolve() for s in shards}:
        raise UserError(f"--out {out} is also an input shard; choose a new file")
    readers = [CacheReader(s) for s in shards]
    first = readers[0]
    for r in readers[1:]:
        if r.settings.build_identity() != first.settings.build_identity():
            raise UserError(f"cannot merge {r.path} (settings {r.settings.build_identity()}) with "
                            f"{first.path} (settings {first.settings.build_identity()}); remake "
                            f"the shards with the same flags, e.g. `{first.settings.flags()}` "
                            "(j2k_reduce=False is --exact-j2k)")
    writer = CacheWriter(out, first.settings)
    origin: dict[str, CacheReader] = {}
    try:
        for reader in readers:
            with h5py.File(reader.path, "r") as f:
                for image_id in reader.ids:
                    if image_id in origin:
                        _check_same(image_id, origin[image_id], reader)
                        continue
                    writer.copy_from(f["images"][image_id], image_id)
                    origin[image_id] = reader
    except BaseException:
        writer.close()
        partial_path(out).unlink(missing_ok=True)  # a merge is cheap to redo from the shards
        raise
    writer.finish()
    return len(origin)


def _check_same(image_id: str, a: CacheReader, b: CacheReader) -> None:
    (img_a, hw_a), (img_b, hw_b) = a.read(image_id), b.read(image_id)
    if hw_a != hw_b or img_a.shape != img_b.shape or not np.array_equal(img_a, img_b):
        raise UserError(f"image {image_id!r} is in both {a.path} and {b.path} with different "
                        "pixels; the shards come from different data or settings, remake them")


def main(args: argparse.Namespace) -> int:
    features_out = args.features_out
    if args.meta_out is not None and features_out is None:
        features_out = features_path(args.meta_out)
    check_output_files({"--out": args.out, "--meta-out": args.meta_out,
                        "--features-out": features_out})  # before any copying
    n = merge_caches(list(args.shards), args.out)
    if args.meta_out is not None:
        with CacheReader(args.out) as cache:
            write_tables(cache, args.meta_out, features_out)
    print(f"merge-cache: {n} images from {len(args.shards)} shard(s) in {args.out}", file=sys.stderr)
    return 0
