"""DICOM folder -> HDF5 image cache + META.csv + pixel features (same as ``cxrdet prepare``).

    python preprocessing/dicom_to_hdf5.py --dicom-dir train/ --out train_1024.h5 \\
        --meta-out train_meta.csv --size 1024 --workers 8
"""

from __future__ import annotations

import sys

from cxrdet.cli import run_main
from cxrdet.preprocess.prepare import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    parser = get_args_parser()
    sys.exit(run_main(main, parser.parse_args(), prog=parser.prog))
