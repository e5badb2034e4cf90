"""The one exception a bad DICOM file raises (re-exported as ``dicomio.read.BadDicomError``)."""

from __future__ import annotations


class BadDicomError(Exception):
    """A file that cannot become a chest X-ray image; ``str(e)`` is a one-line reason."""

    def __init__(self, reason: str):
        super().__init__(" ".join(str(reason).split()))
        self.reason = str(self)
