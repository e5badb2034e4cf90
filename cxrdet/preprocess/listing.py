"""Which inputs a run processes: the DICOM files of a folder and shard ``i/n`` of the image ids.

Shared by ``cxrdet prepare``, ``cxrdet infer`` and the metadata script, so every machine of a
sharded run computes the same disjoint, balanced split from the ids alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cxrdet.dicomio.meta import DICOM_SUFFIXES, image_id_from_path
from cxrdet.errors import UserError
from cxrdet.formats.failures import FailureLog


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> ``(i, n)``; None -> ``(0, 1)`` (everything)."""
    if text is None:
        return 0, 1
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise UserError(f"shard {text!r}: expected I/N with integers, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"shard {text}: need 0 <= I < N (shards are numbered from 0), e.g. 0/{max(n, 1)}")
    return i, n


def select_shard(ids: Sequence[str], index: int, count: int) -> list[str]:
    """Shard ``index`` of ``count``: every count-th id of the SORTED ids, starting at index.

    Depends only on the set of ids, so every machine computes the same disjoint split, and the
    shards are balanced to within one image.
    """
    return sorted(ids)[index::count]


def list_dicoms(folder: Path, shard: tuple[int, int], failures: FailureLog) -> list[Path]:
    """Sorted DICOM files of ``folder`` in shard ``i`` of ``n``; a repeated image id is a failure."""
    if not folder.is_dir():
        raise UserError(f"DICOM folder {folder} is not a folder; point it at the DICOM files")
    by_id: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in DICOM_SUFFIXES:
            image_id = image_id_from_path(path)
            if image_id in by_id:
                failures.add(path.name, f"duplicate image id {image_id!r} (also {by_id[image_id].name})")
                continue
            by_id[image_id] = path
    if not by_id:
        raise UserError(f"no .dicom or .dcm files in {folder}; expected VinBigData-style "
                        "<image_id>.dicom files")
    by_shard = select_shard(list(by_id), *shard)
    return [by_id[k] for k in by_shard]
