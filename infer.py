"""Batch inference, the same as ``cxrdet infer`` (see ``python infer.py --help``)."""

import sys

from cxrdet.cli import run_main
from cxrdet.dicomout.infer_command import get_args_parser, main

if __name__ == "__main__":
    parser = get_args_parser()
    parser.prog = "infer.py"
    sys.exit(run_main(main, parser.parse_args(), prog=parser.prog))
