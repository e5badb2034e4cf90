"""Pure numpy intensity maths: stored values -> display image in ``[0, 1]`` -> uint8.

Order (DICOM PS3.3 C.11 grayscale pipeline): modality LUT (rescale slope/intercept), then the
VOI transform (VOI LUT, window centre/width, or min-max), then MONOCHROME1 inversion so bone is
bright, then quantisation to uint8. Every function takes and returns numpy arrays, no tags.
"""

from __future__ import annotations

import numpy as np

VOI_CHOICES = ("auto", "voi_lut", "window", "minmax")


def rescale(stored: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """Modality LUT: ``stored * slope + intercept`` as float32 (identity stays exact)."""
    out = np.asarray(stored, dtype=np.float32)
    if slope != 1.0:
        out = out * np.float32(slope)
    if intercept != 0.0:
        out = out + np.float32(intercept)
    return out


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Window centre/width -> ``[0, 1]`` float32, per DICOM PS3.3 C.11.2.1.2.

    ``LINEAR`` uses the standard's half-pixel offsets, ``LINEAR_EXACT`` the plain ramp,
    ``SIGMOID`` the logistic curve. Width must be >= 1 (>0 for LINEAR_EXACT).
    """
    x = np.asarray(values, dtype=np.float32)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        out = (x - (center - width / 2.0)) / width
    else:
        if width < 1:
            raise ValueError(f"LINEAR window width must be >= 1, got {width}")
        if width == 1:  # the standard's degenerate case: a threshold at centre - 0.5
            return (x > center - 0.5).astype(np.float32)
        out = (x - (center - 0.5)) / (width - 1.0) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def voi_lut(values: np.ndarray, lut: np.ndarray, first_mapped: int) -> np.ndarray:
    """Apply a VOI LUT table -> ``[0, 1]`` float32, scaled by the table's own output range.

    Inputs below ``first_mapped`` take the first entry, inputs past the end the last entry
    (PS3.3 C.11.2.1.1). Output is divided by the table's min..max span so the LUT's full
    output range fills the display range whatever its bits per entry.
    """
    table = np.asarray(lut, dtype=np.float32)
    idx = np.asarray(values, dtype=np.float64) - float(first_mapped)
    idx = np.clip(np.rint(idx), 0, table.size - 1).astype(np.intp)
    lo, hi = float(table.min()), float(table.max())
    if hi <= lo:
        return np.zeros(idx.shape, dtype=np.float32)
    return ((table - lo) / (hi - lo))[idx]


def minmax(values: np.ndarray) -> np.ndarray:
    """Stretch to ``[0, 1]`` using the image's own min and max; a flat image gives zeros."""
    x = np.asarray(values, dtype=np.float32)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.float32)
    return ((x - lo) * np.float32(1.0 / (hi - lo))).astype(np.float32)


def invert(display: np.ndarray) -> np.ndarray:
    """MONOCHROME1 -> MONOCHROME2 on a ``[0, 1]`` image (bright bone)."""
    return (np.float32(1.0) - np.asarray(display, dtype=np.float32)).astype(np.float32)


def to_uint8(display: np.ndarray) -> np.ndarray:
    """``[0, 1]`` float -> uint8 with rounding (0.5 -> 128), values outside clipped."""
    x = np.asarray(display, dtype=np.float32) * np.float32(255.0)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
