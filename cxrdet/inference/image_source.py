"""A PNG/JPEG folder as an inference source, prepared exactly as ``cxrdet prepare --image-dir``
(same file list and ids, same :func:`preprocess.pipeline.preprocess_image_file`). Files prepare
would refuse (id collisions) become listing failures. Unlike ``--png-dir`` no original-size CSV
is needed: the file's own size is the original."""

from __future__ import annotations

import os
from pathlib import Path

from cxrdet.errors import UserError
from cxrdet.formats.failures import FailureLog
from cxrdet.inference.sources import ImageSource, Sample


class ImageDirSource(ImageSource):
    def __init__(self, folder: str | os.PathLike, settings, with_features: bool = False) -> None:
        from cxrdet.preprocess.image_files import list_image_files

        root = Path(folder)
        if not root.is_dir():
            raise UserError(f"--image-dir {root} is not a folder; point it at the PNG/JPEG files")
        self.paths, collisions = list_image_files(root)
        if not self.paths:
            raise UserError(f"--image-dir {root}: no .png, .jpg or .jpeg files found")
        self.listing_failures = FailureLog()
        for rel, reason in collisions:
            self.listing_failures.add(rel, reason)
        self.settings = settings
        super().__init__(sorted(self.paths), settings.size, with_features)

    def load(self, image_id: str) -> Sample:
        from cxrdet.preprocess.pipeline import preprocess_image_file

        prepared = preprocess_image_file(self.paths[image_id], image_id, self.settings, self.with_features)
        return Sample(image_id, prepared.image, prepared.orig_hw, dict(prepared.meta), dict(prepared.features))
