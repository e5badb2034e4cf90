"""``cxrdet merge-probabilities``: combine the shard outputs of ``cxrdet classify --shard i/n``.

    cxrdet classify --model RUN/export --cache test.h5 --shard 0/4 --out probs_0.csv   (1/4, 2/4, 3/4 elsewhere)
    cxrdet merge-probabilities --out probs.csv probs_0.csv probs_1.csv probs_2.csv probs_3.csv

Every shard is checked as a probability CSV (:mod:`cxrdet.formats.probabilities`) with the same
class columns; an image in two shards stops the merge with file and line. Rows are copied
verbatim and sorted by image_id, so the merged file equals an unsharded run's byte for byte.
The shards' errors CSVs (``<stem>.errors.csv``) and provenance records (``<stem>.provenance.json``)
beside them are merged beside ``--out``; exit 3 when any image failed.
"""

from __future__ import annotations

import argparse
import sys

from cxrdet.errors import UserError
from cxrdet.formats import atomic
from cxrdet.formats.failures import errors_path
from cxrdet.formats.probabilities import read_probabilities
from cxrdet.formats.provenance import collect_provenance, write_merged_provenance
from cxrdet.inference.merge import merge_errors, merge_rows

INTERRUPT_NOTE = "outputs are written last, each whole (atomically); rerun the command"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Combine shard probability CSVs of `cxrdet classify --shard i/n` "
                                            "(with their errors CSVs and provenance records).")
    p.add_argument("shards", nargs="+", metavar="SHARD.csv", help="probability CSVs of the shards")
    p.add_argument("--out", required=True, help="merged probability CSV (written atomically)")
    p.add_argument("--expect", type=int, default=None, metavar="N", help="number of images the merge must have")
    return p


def main(args: argparse.Namespace) -> int:
    classes = None
    for path in args.shards:
        names = read_probabilities(path).class_names  # every row checked, with its line
        if classes is not None and names != classes:
            raise UserError(f"{path}:1: classes {names} differ from {args.shards[0]}'s {classes}; "
                            "merge shards of the same classifier(s) only")
        classes = names
    header, rows = merge_rows(args.shards, None)
    if args.expect is not None and len(rows) != args.expect:
        raise UserError(f"merged {len(rows)} images from {len(args.shards)} file(s) but --expect {args.expect}; "
                        "a shard is missing or incomplete")
    errors = merge_errors([str(errors_path(p)) for p in args.shards if errors_path(p).is_file()])
    runs, no_record = collect_provenance(args.shards)
    atomic.write_csv(args.out, header, rows)
    print(f"merged {len(rows)} images from {len(args.shards)} shard(s) -> {args.out}")
    if write_merged_provenance(args.out, runs) is None:
        print(f"note: no provenance record beside {', '.join(map(str, no_record[:3]))}: none written for "
              f"{args.out}", file=sys.stderr)
    return errors.report(errors_path(args.out))
