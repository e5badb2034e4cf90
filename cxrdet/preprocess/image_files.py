"""PNG/JPEG folders: which files are images, and the image id each file gets.

An image id is the file's path relative to the folder, without the extension, its folders
joined by ``__`` and every character outside ``A-Z a-z 0-9 . _ -`` replaced by ``_``::

    img001.png                      -> img001
    Pneumonia/img001.png            -> Pneumonia__img001
    Lung Opacity/batch 2/x.jpeg     -> Lung_Opacity__batch_2__x

So an id never holds a path separator and never escapes an output folder when it is used as a
file name (``cxrdet.errors.safe_child``); a file directly in the folder keeps its stem, as the
NIH ChestX-ray14 ``Image Index`` expects. Two files that map to one id (``a__b/c.png`` and
``a/b__c.png``, or ``x.png`` and ``x.jpg``) collide: the first in sorted path order keeps the
id, the others are listed as failures. Hidden files and folders (``.name``) are skipped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePath

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
JOIN = "__"  # stands for a folder separator in an id
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def image_id_from_relpath(relpath: str | os.PathLike) -> str:
    """The image id of a file at ``relpath`` (relative to the image folder); see the module doc."""
    parts = list(PurePath(relpath).parts)
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{relpath!r} is not a relative path inside the image folder")
    parts[-1] = PurePath(parts[-1]).stem or parts[-1]
    image_id = JOIN.join(_UNSAFE.sub("_", p) for p in parts)
    return "_" + image_id if image_id.startswith(".") else image_id  # never '.', '..' or hidden


def _visible(rel: Path) -> bool:
    return not any(part.startswith(".") for part in rel.parts)


def list_image_files(folder: Path, recursive: bool = True) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """``({image_id: path}, [(relative path, reason)])`` of the PNG/JPEG files under ``folder``.

    Sorted by relative path, so which of two colliding files keeps the id is reproducible.
    """
    pattern = "**/*" if recursive else "*"
    files = sorted((p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: p.relative_to(folder).as_posix())
    by_id: dict[str, Path] = {}
    collisions: list[tuple[str, str]] = []
    for path in files:
        rel = path.relative_to(folder)
        if not _visible(rel):
            continue
        image_id = image_id_from_relpath(rel)
        if image_id in by_id:
            other = by_id[image_id].relative_to(folder).as_posix()
            collisions.append((rel.as_posix(), f"image id {image_id!r} collides with {other} (ids join folders "
                                               "with '__' and replace unsafe characters by '_'); rename one file"))
            continue
        by_id[image_id] = path
    return by_id, collisions
