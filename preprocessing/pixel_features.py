"""HDF5 cache -> pixel-feature CSV (``px_*`` gate features recomputed from cached pixels).

``cxrdet prepare`` already writes ``<meta stem>_pixel_features.csv``; use this to recompute the
features of an existing cache, e.g. one merged from shards or made by an older version.

    python preprocessing/pixel_features.py --cache train_1024.h5 --out train_pixel_features.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxrdet.cli import run_main
from cxrdet.formats.atomic import write_frame
from cxrdet.preprocess.cache import CacheReader
from cxrdet.preprocess.metadata import features_from_cache


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", required=True, type=Path, help="HDF5 cache made by cxrdet prepare")
    p.add_argument("--out", required=True, type=Path, help="feature CSV to write")
    return p


def main(args: argparse.Namespace) -> int:
    with CacheReader(args.cache) as cache:
        frame = features_from_cache(cache)
    write_frame(args.out, frame)
    print(f"{len(frame)} rows in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    parser = get_args_parser()
    sys.exit(run_main(main, parser.parse_args(), prog=parser.prog))
