"""``cxrdet merge-submissions``: combine the shard outputs of ``cxrdet infer --shard i/n``.

Sharded inference, step by step::

    cxrdet infer --model RUN/artifact --dicom-dir test/ --shard 0/4 --out sub_0.csv --image-level-out il_0.csv
    ...                                               (shards 1/4, 2/4, 3/4 on other machines)
    cxrdet merge-submissions --out submission.csv sub_*.csv \
        --image-level il_*.csv --image-level-out image_level.csv \
        --errors sub_*.errors.csv --errors-out submission.errors.csv

Shards are a deterministic split of the sorted image ids (every n-th id from i), so every
image is predicted exactly once and the merged file equals an unsharded run's: byte for byte
with ``--batch-size 1``; with larger batches an image's neighbours in its batch (zero padding to
the largest image) can move a score or coordinate in the last printed digit. Rows are copied
verbatim (no float re-formatting) and sorted by image_id.
An image_id in two inputs, or a PredictionString that does not parse, stops the merge with the
file and line; ``--expect N`` also checks that no shard is missing.

The shards' errors CSVs (``--errors``) are concatenated (rows repeated by several shards, such
as duplicate-id listing problems every shard sees, once) into ``--errors-out``; when any image
failed the merge lists them and exits 3, as the shards did. The provenance records beside the
shard CSVs (``<stem>.provenance.json``, from ``cxrdet infer``) are merged beside ``--out`` so
``cxrdet train-gate`` can check merged out-of-fold detections; if a shard has none, no merged
record is written (and an old one beside ``--out`` is removed).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from cxrdet.errors import UserError
from cxrdet.formats import atomic
from cxrdet.formats.csvrows import csv_records
from cxrdet.formats.failures import FailureLog, read_failures
from cxrdet.formats.provenance import collect_provenance, write_merged_provenance

INTERRUPT_NOTE = ("outputs are written last, each whole (atomically), so any not yet written are missing, "
                  "never half-written; rerun the command")

from cxrdet.formats.submission import HEADER


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Combine shard submissions (and image-level CSVs) of `cxrdet infer --shard i/n`; "
        "refuses an image that appears in two shards.",
    )
    p.add_argument("shards", nargs="+", metavar="SHARD.csv", help="submission CSVs of the shards")
    p.add_argument("--out", required=True, help="merged submission CSV (written atomically)")
    p.add_argument("--image-level", nargs="*", default=[], metavar="IL.csv",
                   help="image-level CSVs of the shards (from `cxrdet infer --image-level-out`)")
    p.add_argument("--image-level-out", default=None, help="merged image-level CSV")
    p.add_argument("--expect", type=int, default=None, metavar="N",
                   help="number of images the merged submission must have (catches a missing shard)")
    p.add_argument("--errors", nargs="*", default=[], metavar="ERR.csv",
                   help="errors CSVs of the shards (`cxrdet infer` writes <out stem>.errors.csv)")
    p.add_argument("--errors-out", default=None, help="merged errors CSV (item,reason)")
    return p


def read_rows(path: str | os.PathLike, header: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """A CSV's header and rows; ``header`` (if given) must match exactly."""
    path = Path(path)
    rows = [row for _, row in csv_records(path)]
    if not rows:
        raise UserError(f"{path}: empty file, expected a header line")
    if header is not None and rows[0] != header:
        raise UserError(f"{path} line 1: expected header {','.join(header)}, found {','.join(rows[0])}")
    width = len(rows[0])
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise UserError(f"{path} line {line}: expected {width} fields, found {len(row)}")
    return rows[0], rows[1:]


def merge_rows(files: list[str], header: list[str] | None, check=None) -> tuple[list[str], list[list[str]]]:
    """Rows of all ``files`` sorted by their first column; a repeated id is a UserError."""
    seen: dict[str, str] = {}
    merged: list[list[str]] = []
    first_header: list[str] | None = None
    for path in files:
        head, rows = read_rows(path, header)
        if first_header is None:
            first_header = head
        elif head != first_header:
            raise UserError(f"{path} line 1: header {','.join(head)} differs from {files[0]}'s")
        for line, row in enumerate(rows, start=2):
            image_id = row[0]
            if image_id in seen:
                raise UserError(
                    f"{path} line {line}: image_id {image_id!r} is also in {seen[image_id]}; "
                    "shards must not overlap (use the same n and distinct i in --shard i/n)"
                )
            if check is not None:
                check(path, line, row)
            seen[image_id] = str(path)
            merged.append(row)
    merged.sort(key=lambda r: r[0])
    return first_header or [], merged


def write_rows_atomic(path: str | os.PathLike, header: list[str], rows: list[list[str]],
                      lineterminator: str = "\r\n") -> Path:
    """Write a CSV through a temporary file renamed over ``path`` (never half-written).

    Line ends follow the writer of the inputs (csv module: CRLF for submissions; pandas: LF for
    image-level CSVs), so a merged file is byte-identical to an unsharded run's.
    """
    return atomic.write_csv(path, header, rows, lineterminator=lineterminator)


def _check_prediction(path: str, line: int, row: list[str]) -> None:
    from cxrdet.formats.submission import parse_prediction_string

    try:
        parse_prediction_string(row[1], where=f"{path} line {line}")
    except ValueError as e:
        raise UserError(f"bad PredictionString: {e}") from None


def merge_errors(files: list[str]) -> FailureLog:
    """The rows of the shards' errors CSVs, each distinct row once, in input order."""
    log, seen = FailureLog(), set()
    for path in files:
        for row in read_failures(path).rows:
            if row not in seen:
                seen.add(row)
                log.rows.append(row)
    return log


def check_image_level(il_rows: list[list[str]], rows: list[list[str]]) -> None:
    # failed images have no image-level row, so the image-level ids are a subset
    stray = sorted({r[0] for r in il_rows} - {r[0] for r in rows})
    if stray:
        raise UserError(
            f"the image-level CSVs hold images that no submission has (e.g. {stray[:3]}); "
            "pass the image-level CSVs of the same shards"
        )


def main(args: argparse.Namespace) -> int:
    if bool(args.image_level) != bool(args.image_level_out):
        raise UserError("--image-level and --image-level-out go together")
    if bool(args.errors) != bool(args.errors_out):
        raise UserError("--errors and --errors-out go together")
    _, rows = merge_rows(args.shards, HEADER, check=_check_prediction)
    if args.expect is not None and len(rows) != args.expect:
        raise UserError(
            f"merged {len(rows)} images from {len(args.shards)} file(s) but --expect {args.expect}; "
            "a shard is missing or incomplete"
        )
    if args.image_level:
        from cxrdet.formats.image_level import IMAGE_LEVEL_COLUMNS

        il_head, il_rows = merge_rows(args.image_level, None)  # the shards' headers must agree
        if il_head[:len(IMAGE_LEVEL_COLUMNS)] != IMAGE_LEVEL_COLUMNS:
            raise UserError(f"{args.image_level[0]} line 1: expected header {','.join(IMAGE_LEVEL_COLUMNS)}[,clf_...], "
                            f"found {','.join(il_head)}")
        check_image_level(il_rows, rows)
    errors = merge_errors(args.errors)
    runs, no_record = collect_provenance(args.shards)
    # everything checked: only now write, so a refused merge leaves no output behind
    write_rows_atomic(args.out, HEADER, rows)
    print(f"merged {len(rows)} images from {len(args.shards)} shard(s) -> {args.out}")
    if write_merged_provenance(args.out, runs) is None:
        print(f"note: no provenance record beside {', '.join(map(str, no_record[:3]))}: none written for "
              f"{args.out} (`cxrdet train-gate` cannot check it is out-of-fold image by image)", file=sys.stderr)
    if args.image_level:
        write_rows_atomic(args.image_level_out, il_head, il_rows, lineterminator="\n")
        print(f"merged image-level CSV ({len(il_rows)} images) -> {args.image_level_out}")
    return errors.report(args.errors_out) if args.errors else 0
