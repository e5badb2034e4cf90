#!/usr/bin/env python3
"""Train the detector: the same command as ``cxrdet train`` (see ``--help`` and docs/training.md)."""

from __future__ import annotations

import sys

from cxrdet.cli import run_main
from cxrdet.detector.train import get_args_parser, main

if __name__ == "__main__":
    sys.exit(run_main(main, get_args_parser().parse_args(), prog="train_detector.py"))
