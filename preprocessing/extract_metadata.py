"""DICOM folder -> META.csv from the tags only (no pixel decoding).

    python preprocessing/extract_metadata.py --dicom-dir train/ --out train_meta.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxrdet.cli import run_main
from cxrdet.formats.atomic import write_frame
from cxrdet.formats.failures import FailureLog, errors_path
from cxrdet.preprocess.metadata import collect_metadata
from cxrdet.preprocess.listing import list_dicoms, parse_shard


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dicom-dir", required=True, type=Path, help="folder of .dicom/.dcm files")
    p.add_argument("--out", required=True, type=Path, help="metadata CSV to write")
    p.add_argument("--shard", default=None, metavar="I/N", help="only shard I of N (0-based)")
    p.add_argument("--errors-out", type=Path, default=None,
                   help="errors CSV (default: <out stem>.errors.csv beside --out)")
    return p


def main(args: argparse.Namespace) -> int:
    failures = FailureLog()
    paths = list_dicoms(args.dicom_dir, parse_shard(args.shard), failures)
    frame = collect_metadata(paths, failures)
    write_frame(args.out, frame)
    print(f"{len(frame)} rows in {args.out}", file=sys.stderr)
    return failures.report(args.errors_out or errors_path(args.out))


if __name__ == "__main__":
    parser = get_args_parser()
    sys.exit(run_main(main, parser.parse_args(), prog=parser.prog))
