"""How each synthetic image is "acquired": size, vendor, bit depth, photometric, rescale,
window / VOI LUT, transfer syntax, and the mapping from the display image to stored values.

The mixes follow docs/dataset.md (sizes, 12-16 bits, both photometrics, some JPEG 2000). Values
that a small test set must all contain (both photometrics, several bit depths, each transfer
syntax) are dealt out by quota rather than drawn independently, so even 10 images show the
variety; the order is then shuffled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (Manufacturer, Modality) of a few vendors seen in CXR archives
VENDORS = (
    ("FUJIFILM Corporation", "CR"),
    ("Philips Medical Systems", "DX"),
    ("SIEMENS", "DX"),
    ("GE Healthcare", "DX"),
    ("Carestream Health", "CR"),
    ("Agfa", "CR"),
)
TRANSFER_MIX = {"explicit": 0.5, "implicit": 0.1, "jpeg2000": 0.25, "rle": 0.15}
BITS_MIX = {12: 0.5, 14: 0.3, 16: 0.2}
# (slope, intercept): mostly identity, some vendors write non-trivial modality LUTs
RESCALES = ((1.0, 0.0), (1.0, -1024.0), (0.5, 0.0), (2.0, -500.0), (0.25, 100.0))
RESCALE_P = (0.65, 0.12, 0.1, 0.08, 0.05)
# common full-resolution sizes (rows, cols) and their share; the rest is drawn around the median
COMMON_SIZES = (((2430, 1994), 0.12), ((3072, 3072), 0.09), ((2880, 2304), 0.1),
                ((2048, 2048), 0.02), ((2836, 2836), 0.02), ((2500, 3000), 0.02))


@dataclass(frozen=True)
class Acquisition:
    rows: int
    cols: int
    modality: str
    manufacturer: str
    photometric: str
    bits_stored: int
    rescale: tuple[float, float]  # (slope, intercept)
    stored_range: tuple[int, int]  # stored values of display black / white (before inversion)
    gamma: float  # detector response: display = (stored fraction) ** gamma
    window: tuple[tuple[float, ...], tuple[float, ...]] | None  # (centres, widths), modality units
    voi_lut: bool
    transfer_syntax: str
    pixel_spacing: float  # mm per pixel of the written (scaled) image


def quota(rng: np.random.Generator, n: int, mix: dict) -> list:
    """``n`` values with counts proportional to ``mix`` (largest remainder, each option at least
    once when ``n`` allows), in random order."""
    keys, p = list(mix), np.array(list(mix.values()), dtype=float)
    p /= p.sum()
    counts = np.floor(p * n).astype(int)
    counts[np.argsort(-(p * n - counts), kind="stable")[: n - counts.sum()]] += 1
    if n >= len(keys):
        for k in np.flatnonzero(counts == 0):
            counts[k] += 1
            counts[np.argmax(counts)] -= 1
    out = [k for k, c in zip(keys, counts) for _ in range(c)]
    return [out[i] for i in rng.permutation(n)]


def sample_size(rng: np.random.Generator, scale: float) -> tuple[int, int]:
    """(rows, cols) from the VinBigData size distribution, times ``scale``."""
    u = rng.random()
    for size, share in COMMON_SIZES:
        if u < share:
            rows, cols = size
            break
        u -= share
    else:
        rows = rng.uniform(927, 2000) if rng.random() < 0.06 else rng.normal(2847, 260)
        rows = float(np.clip(rows, 927, 3408))
        cols = float(np.clip(rows * rng.uniform(0.76, 0.93), 823, 3320))
    return max(64, int(round(rows * scale))), max(64, int(round(cols * scale)))


def sample_acquisitions(rng: np.random.Generator, n: int, scale: float) -> list[Acquisition]:
    vendors = quota(rng, n, {v: 1.0 for v in range(len(VENDORS))})
    syntaxes = quota(rng, n, TRANSFER_MIX)
    bits = quota(rng, n, BITS_MIX)
    photometric = quota(rng, n, {"MONOCHROME1": 0.4, "MONOCHROME2": 0.6})
    return [_one(rng, scale, VENDORS[vendors[i]], syntaxes[i], bits[i], photometric[i]) for i in range(n)]


def _one(rng, scale, vendor, syntax, bits, photometric) -> Acquisition:
    name, modality = vendor
    rows, cols = sample_size(rng, scale)
    maxval = (1 << bits) - 1
    lo, hi = int(rng.uniform(0.02, 0.12) * maxval), int(rng.uniform(0.75, 0.97) * maxval)
    slope, intercept = RESCALES[rng.choice(len(RESCALES), p=RESCALE_P)]
    gamma = float(rng.uniform(0.85, 1.15))
    # window over the display range that holds the anatomy (air .. bone)
    m = [slope * _stored_of(v, lo, hi, gamma, photometric) + intercept for v in (0.02, 0.8)]
    centre, width = (m[0] + m[1]) / 2 * (1 + rng.normal(0, 0.02)), abs(m[1] - m[0]) * rng.uniform(0.95, 1.2)
    window = ((round(centre, 1),), (round(width, 1),))
    if rng.random() < 0.25:  # multi-valued: a second, narrower "soft tissue" window
        window = ((round(centre, 1), round(centre * 1.05, 1)), (round(width, 1), round(width * 0.7, 1)))
    elif rng.random() < 0.08:
        window = None  # some exports carry no window: readers fall back to min-max
    # VOI LUTs index modality values directly, so only with identity rescale; past 14 bits the
    # table would exceed the 64 kB an explicit-VR US element can hold
    voi_lut = (slope, intercept) == (1.0, 0.0) and bits <= 14 and rng.random() < 0.15
    spacing = round(rng.uniform(0.1, 0.175) / scale, 4)
    return Acquisition(rows, cols, modality, name, photometric, bits, (slope, intercept), (lo, hi),
                       gamma, window, voi_lut, syntax, spacing)


def _stored_of(v, lo: int, hi: int, gamma: float, photometric: str):
    """Display value(s) in [0, 1] (bright = dense) -> stored value(s) (float)."""
    frac = np.power(np.clip(v, 0.0, 1.0), 1.0 / gamma)
    if photometric == "MONOCHROME1":  # low stored values display white
        frac = 1.0 - frac
    return lo + frac * (hi - lo)


def encode(display: np.ndarray, acq: Acquisition) -> np.ndarray:
    """Display image in [0, 1] -> stored uint16 values for ``acq``."""
    lo, hi = acq.stored_range
    return np.round(_stored_of(display, lo, hi, acq.gamma, acq.photometric)).astype(np.uint16)


def voi_lut_table(acq: Acquisition) -> tuple[np.ndarray, int]:
    """A sigmoid VOI LUT over the stored range (12-bit output) and its first mapped value.

    Only used with identity rescale, so modality values equal stored values.
    """
    lo, hi = acq.stored_range
    x = np.arange(lo, hi + 1, dtype=np.float64)
    centre, width = (acq.window[0][0], acq.window[1][0]) if acq.window else ((lo + hi) / 2, hi - lo)
    y = 1.0 / (1.0 + np.exp(-4.0 * (x - centre) / width))
    y = (y - y.min()) / max(y.max() - y.min(), 1e-12)
    return np.round(y * 4095).astype(np.uint16), lo


def dicom_tags(acq: Acquisition) -> dict:
    """Keyword arguments for :func:`cxrdet.dicomio.write.write_dicom` (pixels and ids aside)."""
    tags = dict(
        photometric=acq.photometric,
        bits_stored=acq.bits_stored,
        rescale_slope=acq.rescale[0],
        rescale_intercept=acq.rescale[1],
        window_center=None if acq.window is None else list(acq.window[0]),
        window_width=None if acq.window is None else list(acq.window[1]),
        transfer_syntax=acq.transfer_syntax,
        modality=acq.modality,
        manufacturer=acq.manufacturer,
        pixel_spacing=(acq.pixel_spacing, acq.pixel_spacing),
    )
    if acq.voi_lut:
        tags["voi_lut"], tags["voi_lut_first_mapped"] = voi_lut_table(acq)
    return tags
