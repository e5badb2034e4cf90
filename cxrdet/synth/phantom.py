"""A chest-like phantom: PA chest radiograph anatomy rendered with numpy (+ OpenCV blurs).

Everything is drawn in a *chest frame*: ``X`` runs from the image's left to right, ``Y``
downwards, both in units of half the chest width, origin between the lungs at hilum height;
patient rotation and size variation are a rotation/scale of that frame. The image is a display
image in ``[0, 1]`` (bright = dense, as a radiologist views it); ``dataset`` maps it to stored
DICOM values. Image left is the patient's right (PA view), so the heart and the aortic knob sit
to the image right.

The phantom is returned in two layers: ``base`` (anatomy) and ``markings`` (lung vessel
texture), because a pneumothorax must erase the markings where the lung has collapsed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SOFT_TISSUE = 0.45  # display level of soft tissue; lungs, bones and lesions are relative to it
LUNG_DEPTH = 0.28  # how much darker aerated lung is than soft tissue
SIDES = (-1, 1)  # -1: image left (patient's right lung), +1: image right (patient's left)


def smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, smooth in between (soft edges without aliasing)."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def inside(f: np.ndarray, edge: float) -> np.ndarray:
    """Soft indicator of ``f < 0`` for a signed pseudo-distance ``f`` (chest units)."""
    return smoothstep(0.5 - f / edge).astype(np.float32)


def blurred_noise(rng: np.random.Generator, hw: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth random field with about ``cells`` blobs across the long side, std ~1."""
    h, w = hw
    step = max(h, w) / cells
    small = rng.standard_normal((max(2, int(h / step) + 2), max(2, int(w / step) + 2)))
    field = cv2.resize(small.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return field / max(float(field.std()), 1e-6)


@dataclass(frozen=True)
class LungShape:
    """One lung field: a superellipse cut by the diaphragm dome."""

    side: int
    xc: float  # centre |X|
    ax: float  # half width
    yc: float
    ay: float  # half height
    dome: float  # dome height (Y of the dome top); the costophrenic angle lies lower

    def lateral_x(self, y: np.ndarray | float) -> np.ndarray:
        """|X| of the lateral lung edge at height ``y`` (NaN outside the field's span)."""
        r = 1.0 - np.abs((np.asarray(y, dtype=np.float64) - self.yc) / self.ay) ** 2.5
        with np.errstate(invalid="ignore"):
            return np.where(r > 0, self.xc + self.ax * np.power(np.clip(r, 0, 1), 1 / 2.5), np.nan)

    def dome_y(self, x_abs: np.ndarray | float) -> np.ndarray:
        """Y of the diaphragm under the lung at |X| = ``x_abs``: lowest at the lateral angle."""
        return self.dome + 0.32 * ((np.asarray(x_abs) - (self.xc - 0.05)) / self.ax) ** 2

    def costophrenic(self) -> tuple[float, float]:
        """(X, Y) of the costophrenic angle (lateral lung base)."""
        y = self.yc + 0.55 * self.ay
        x_abs = float(self.lateral_x(y))
        return self.side * x_abs, min(float(self.dome_y(x_abs)), self.yc + self.ay)


@dataclass(frozen=True)
class Heart:
    xc: float
    yc: float
    ax: float
    ay: float

    def mask(self, X: np.ndarray, Y: np.ndarray, edge: float = 0.02) -> np.ndarray:
        f = np.sqrt(((X - self.xc) / self.ax) ** 2 + ((Y - self.yc) / self.ay) ** 2) - 1.0
        return inside(f * min(self.ax, self.ay), edge)


@dataclass
class Anatomy:
    """Sampled geometry of one chest plus the pixel grids of its frame."""

    hw: tuple[int, int]
    unit: float  # pixels per chest unit
    angle: float  # patient rotation, radians
    centre: tuple[float, float]  # pixel (x, y) of the frame origin
    lungs: dict[int, LungShape]
    heart: Heart
    knob: tuple[float, float, float]  # aortic knob (X, Y, radius)
    age: int
    sex: str
    X: np.ndarray  # float32 [h, w] chest-frame coordinates of each pixel centre
    Y: np.ndarray
    lung: np.ndarray | None = None  # soft mask of both lung fields (before the heart)
    lung_open: np.ndarray | None = None  # aerated lung actually visible (heart, mediastinum out)

    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        """Chest frame -> pixel (col, row) continuous coordinates."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        px = self.centre[0] + self.unit * (c * x - s * y)
        py = self.centre[1] + self.unit * (s * x + c * y)
        return float(px), float(py)


def sample_anatomy(rng: np.random.Generator, hw: tuple[int, int], age: int, sex: str) -> Anatomy:
    """Draw one patient's chest geometry (rotation, size, lung/heart shape) for an image size."""
    h, w = hw
    scale = rng.uniform(0.86, 1.0)
    unit = scale * min(0.5 * w, h / 1.8)  # chest width fits the columns, lungs fit the rows
    centre = (w / 2 + rng.normal(0, 0.015) * w, h * 0.5 + rng.normal(0, 0.02) * h)
    angle = float(np.deg2rad(rng.normal(0, 1.5)))
    tall = rng.uniform(0.95, 1.06)
    lungs = {}
    for side in SIDES:
        dome = 0.42 + (0.05 if side > 0 else 0.0) + rng.normal(0, 0.025)  # right dome higher
        lungs[side] = LungShape(
            side=side,
            xc=0.44 + rng.normal(0, 0.01),
            ax=0.36 + rng.normal(0, 0.012),
            yc=0.0 + rng.normal(0, 0.015),
            ay=0.72 * tall,
            dome=dome,
        )
    heart = Heart(
        xc=0.12 + rng.normal(0, 0.015),
        yc=0.33 + rng.normal(0, 0.02),
        ax=0.34 * rng.uniform(0.93, 1.07),
        ay=0.24 * rng.uniform(0.93, 1.07),
    )
    knob = (0.14 + rng.normal(0, 0.008), -0.33 + rng.normal(0, 0.015), 0.065 + 0.0004 * (age - 40))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx + 0.5 - centre[0], yy + 0.5 - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    X = ((c * dx + s * dy) / unit).astype(np.float32)
    Y = ((-s * dx + c * dy) / unit).astype(np.float32)
    return Anatomy(hw, unit, angle, centre, lungs, heart, knob, age, sex, X, Y)


def lung_field(anat: Anatomy, lung: LungShape) -> np.ndarray:
    """Soft mask of one lung field."""
    X, Y = anat.X, anat.Y
    xa = lung.side * X
    f = (np.abs((xa - lung.xc) / lung.ax) ** 2.5 + np.abs((Y - lung.yc) / lung.ay) ** 2.5) ** 0.4 - 1
    field = inside(f * 0.36, 0.025)
    above_dome = inside(Y - lung.dome_y(np.abs(X)), 0.02)
    lateral = inside(0.11 - xa, 0.02)  # not in the mediastinum
    return field * above_dome * lateral


def _band(d: np.ndarray, half: float, edge: float) -> np.ndarray:
    """Soft band ``|d| < half`` (d in chest units)."""
    return inside(np.abs(d) - half, edge)


def _segment_distance(X, Y, p0, p1) -> np.ndarray:
    px, py = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((X - p0[0]) * px + (Y - p0[1]) * py) / (px * px + py * py), 0, 1)
    return np.hypot(X - (p0[0] + t * px), Y - (p0[1] + t * py))


RIB_PITCH = 0.135  # vertical spacing of the ribs, chest units
N_RIBS = 10


def _nearest_rib(z: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest rib and the signed distance to it, for ribs that are the level
    sets ``z == centres[i]`` of one field (all ribs of a side share their curvature)."""
    idx = np.clip(np.round((z - centres[0]) / RIB_PITCH), 0, len(centres) - 1).astype(np.intp)
    return idx, z - centres[idx].astype(np.float32)


def _ribs(anat: Anatomy, rng: np.random.Generator, thorax: np.ndarray) -> np.ndarray:
    """Posterior ribs (curved bright bands rising from the spine) and fainter anterior ribs."""
    X, Y = anat.X, anat.Y
    t = np.abs(X)
    osteopenia = np.clip((anat.age - 40) / 50, 0, 1)  # older bones show less contrast
    strength = 0.1 * (1 - 0.45 * osteopenia)
    y0 = -0.78 + RIB_PITCH * np.arange(N_RIBS) + rng.normal(0, 0.008, N_RIBS)
    idx, d = _nearest_rib(Y + 0.12 * t - 0.55 * t * t, y0)
    band = _band(d, 0.026 + 0.002 * idx, 0.012)
    cortex = _band(np.abs(d) - 0.024, 0.006, 0.006)  # brighter cortical edges
    out = (strength * band + 0.5 * strength * cortex) * inside(0.07 - t, 0.02)
    _, d = _nearest_rib(Y + 0.3 * t, y0 + 0.314)  # anterior ribs slope down towards the middle
    out += 0.4 * strength * _band(d, 0.022, 0.012) * (t > 0.35) * (t < 0.92)
    return out * thorax


def _clavicles(anat: Anatomy, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(anat.hw, np.float32)
    for side in SIDES:
        p0 = (side * 0.1, -0.74 + rng.normal(0, 0.01))
        p1 = (side * (0.78 + rng.normal(0, 0.02)), -0.9 + rng.normal(0, 0.02))
        out += 0.15 * inside(_segment_distance(anat.X, anat.Y, p0, p1) - 0.035, 0.015)
    return out


def _spine(anat: Anatomy) -> np.ndarray:
    X, Y = anat.X, anat.Y
    vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * Y / 0.13)
    return (0.07 * vertebrae * _band(X, 0.075, 0.015) * inside(-0.9 - Y, 0.2)).astype(np.float32)


def _mediastinum(anat: Anatomy) -> np.ndarray:
    X, Y = anat.X, anat.Y
    half = 0.1 + 0.035 * np.clip(Y + 0.8, 0, 1.5)
    kx, ky, kr = anat.knob
    knob = inside(np.hypot(X - kx, Y - ky) - kr, 0.015)
    return np.maximum(_band(X - 0.01, 0, 0.02) * inside(np.abs(X) - half, 0.02), knob)


def _body(anat: Anatomy) -> np.ndarray:
    X, Y = anat.X, anat.Y
    half = np.where(Y < -0.95, 0.32 + 0.65 * smoothstep((Y + 1.25) / 0.3), 0.97)
    return inside(np.abs(X) - half, 0.04)


def render_anatomy(anat: Anatomy, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render ``(base, markings)``; also fills ``anat.lung`` and ``anat.lung_open``."""
    X, Y = anat.X, anat.Y
    lung = np.maximum(lung_field(anat, anat.lungs[-1]), lung_field(anat, anat.lungs[1]))
    heart = anat.heart.mask(X, Y)
    media = _mediastinum(anat)
    lung_open = lung * (1 - heart) * (1 - media)
    anat.lung, anat.lung_open = lung, lung_open
    body = _body(anat)
    thorax = inside(np.abs(X) - 0.9, 0.05)
    base = 0.03 + (SOFT_TISSUE - 0.03) * body
    base = base * (1 + 0.06 * (Y.clip(-1, 1)))  # thicker abdomen at the bottom
    base -= LUNG_DEPTH * lung_open
    if anat.sex == "F":  # breast shadows over the lower lateral lungs
        for side in SIDES:
            base += 0.05 * inside(np.hypot((X - side * 0.5) / 0.35, (Y - 0.45) / 0.25) - 1, 0.3)
    base -= 0.09 * _band(X - 0.005, 0.025, 0.01) * inside(Y + 0.3, 0.03) * body  # trachea
    gastric = inside(np.hypot((X - 0.45) / 0.13, (Y - anat.lungs[1].dome - 0.22) / 0.08) - 1, 0.2)
    base -= 0.12 * gastric
    base += _spine(anat) * body + _ribs(anat, rng, thorax) + _clavicles(anat, rng)
    base += 0.02 * blurred_noise(rng, anat.hw, 4) * body  # exposure non-uniformity
    hila = sum(np.hypot(X - s * 0.22, Y + 0.02) for s in SIDES) / 2
    haze = 0.02 * np.clip((anat.age - 30) / 50, 0, 1)  # older lungs look a little busier
    texture = np.abs(blurred_noise(rng, anat.hw, 40)) + 0.6 * np.abs(blurred_noise(rng, anat.hw, 90))
    markings = (0.035 + haze) * texture * np.clip(1.25 - hila, 0.2, 1) * lung_open
    return base.astype(np.float32), markings.astype(np.float32)
