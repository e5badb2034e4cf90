"""Class-dependent lesions: where each finding sits and how it looks (docs/dataset.md).

Every renderer draws an additive change (``delta``) to the display image and a soft ``mask``
of the lesion's extent; the label box is the extent of ``mask >= 0.5``, so boxes describe what
was drawn. Sizes are in chest units (half the chest width, see :mod:`phantom`) and contrasts
are chosen so every lesion stays visible once the image is shrunk to 256 px on the long side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from cxrdet.classes import NAME_TO_ID
from cxrdet.synth.phantom import (
    LUNG_DEPTH,
    SIDES,
    Anatomy,
    Heart,
    blurred_noise,
    inside,
    lung_field,
    smoothstep,
)

MIN_BOX_PX = 3.0  # a lesion narrower than this (original pixels) is re-placed


@dataclass
class Lesion:
    class_id: int
    delta: np.ndarray  # float32 [h, w] added to the display image
    box: np.ndarray  # [4] xyxy in image pixels: extent of the drawn lesion
    clear_markings: np.ndarray | None = None  # [h, w] in [0, 1]: lung markings erased here


def mask_box(mask: np.ndarray, thr: float = 0.5) -> np.ndarray | None:
    """xyxy extent (continuous pixels) of ``mask >= thr``; None when nothing is on."""
    on = mask >= thr
    rows, cols = np.flatnonzero(on.any(axis=1)), np.flatnonzero(on.any(axis=0))
    if rows.size == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def _lung_point(anat: Anatomy, rng: np.random.Generator, v_range: tuple[float, float],
                side: int | None = None, margin: float = 0.08) -> tuple[int, float, float]:
    """(side, X, Y) inside one lung field; ``v_range`` is the height as a fraction of the lung
    (-1 apex .. +1 base), ``margin`` keeps the point that far from the lung edges."""
    side = int(rng.choice(SIDES)) if side is None else side
    lung = anat.lungs[side]
    y = lung.yc + lung.ay * rng.uniform(*v_range)
    lateral = float(np.nan_to_num(lung.lateral_x(y), nan=lung.xc))
    lo, hi = 0.14 + margin, max(0.14 + margin + 0.01, lateral - margin)
    if side > 0:  # the heart takes the medial part of the image-right lung
        lo = max(lo, min(hi - 0.01, 0.2 + margin))
    y = min(y, float(lung.dome_y(lo)) - margin)
    return side, side * rng.uniform(lo, hi), y


def _disk(anat: Anatomy, x: float, y: float, r: float, edge: float = 0.012) -> np.ndarray:
    return inside(np.hypot(anat.X - x, anat.Y - y) - r, edge)


def _blob(anat, rng, x, y, rx, ry, rough: float) -> np.ndarray:
    """Irregular ellipse: the boundary wobbles with a smooth random field."""
    r = np.hypot((anat.X - x) / rx, (anat.Y - y) / ry)
    wobble = rough * blurred_noise(rng, anat.hw, 14)
    return inside((r - 1 + wobble) * min(rx, ry), 0.03)


def _side_lung(anat: Anatomy, side: int) -> np.ndarray:
    return lung_field(anat, anat.lungs[side])


def _aortic_enlargement(anat, rng):
    kx, ky, kr = anat.knob
    r = kr * rng.uniform(1.5, 2.0)
    mask = _disk(anat, kx + 0.6 * (r - kr), ky - rng.uniform(0, 0.03), r)
    return mask, mask * (LUNG_DEPTH * anat.lung_open + 0.03), None


def _atelectasis(anat, rng):
    side, x, y = _lung_point(anat, rng, (0.15, 0.55), margin=0.1)
    if rng.random() < 0.5:  # plate-like (discoid) band
        ang, half = np.deg2rad(rng.uniform(-25, 25)), rng.uniform(0.12, 0.2)
        dx, dy = half * np.cos(ang), half * np.sin(ang)
        p0, p1 = np.array([x - dx, y - dy]), np.array([x + dx, y + dy])
        t = np.clip(((anat.X - p0[0]) * 2 * dx + (anat.Y - p0[1]) * 2 * dy) / (4 * half**2), 0, 1)
        d = np.hypot(anat.X - (p0[0] + t * 2 * dx), anat.Y - (p0[1] + t * 2 * dy))
        mask = inside(d - max(rng.uniform(0.025, 0.04), 1.5 / anat.unit), 0.015)
    else:  # wedge with its apex towards the hilum
        mask = _wedge(anat, (side * 0.25, y - 0.1), (x + side * 0.12, y + 0.05), rng.uniform(0.1, 0.16))
    mask = mask * _side_lung(anat, side)
    return mask, 0.24 * mask, mask


def _wedge(anat, apex, base_mid, half_base) -> np.ndarray:
    ax_, ay_ = apex
    bx, by = base_mid
    nx, ny = by - ay_, -(bx - ax_)  # normal of the wedge axis
    norm = np.hypot(nx, ny)
    nx, ny = nx / norm * half_base, ny / norm * half_base
    poly = [anat.to_pixel(ax_, ay_), anat.to_pixel(bx + nx, by + ny), anat.to_pixel(bx - nx, by - ny)]
    canvas = np.zeros(anat.hw, np.float32)
    cv2.fillPoly(canvas, [np.round(np.array(poly) * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    k = max(3, int(0.02 * anat.unit) | 1)
    return cv2.GaussianBlur(canvas, (k, k), 0)


def _calcification(anat, rng):
    if rng.random() < 0.4:  # calcified aortic arch
        kx, ky, kr = anat.knob
        cx, cy = kx + 0.3 * kr, ky - 0.4 * kr
    else:  # calcified granuloma in the lung
        _, cx, cy = _lung_point(anat, rng, (-0.6, 0.4))
    mask = np.zeros(anat.hw, np.float32)
    for _ in range(int(rng.integers(1, 5))):
        r = rng.uniform(0.018, 0.03)
        mask = np.maximum(mask, _disk(anat, cx + rng.normal(0, 0.03), cy + rng.normal(0, 0.03), r, 0.008))
    return mask, 0.42 * mask, None


def _cardiomegaly(anat, rng):
    h = anat.heart
    big = Heart(h.xc + rng.uniform(0.02, 0.05), h.yc + rng.uniform(0.0, 0.03),
                h.ax * rng.uniform(1.3, 1.5), h.ay * rng.uniform(1.12, 1.25))
    mask = big.mask(anat.X, anat.Y)
    grown = np.clip(mask - h.mask(anat.X, anat.Y), 0, 1)
    return mask, grown * LUNG_DEPTH * anat.lung_open + 0.02 * mask, grown * anat.lung_open


def _consolidation(anat, rng):
    side, x, y = _lung_point(anat, rng, (-0.3, 0.6), margin=0.12)
    mask = _blob(anat, rng, x, y, rng.uniform(0.1, 0.17), rng.uniform(0.1, 0.2), 0.12)
    mask = mask * _side_lung(anat, side)
    bronchi = smoothstep(1 - np.abs(blurred_noise(rng, anat.hw, 30)) / 0.15)  # air bronchograms
    return mask, mask * (0.27 - 0.08 * bronchi), mask


def _textured(anat, rng, v_range, size, cells, net_width, strength):
    """A region inside a lung filled with a reticular (thin net) texture."""
    side, x, y = _lung_point(anat, rng, v_range, margin=0.12)
    mask = _blob(anat, rng, x, y, rng.uniform(*size), rng.uniform(*size) * 1.3, 0.08)
    mask = mask * _side_lung(anat, side)
    net = smoothstep(1 - np.abs(blurred_noise(rng, anat.hw, cells)) / net_width)
    return mask, mask * (0.06 + strength * net), None


def _ild(anat, rng):
    return _textured(anat, rng, (0.0, 0.6), (0.14, 0.22), 70, 0.3, 0.2)


def _fibrosis(anat, rng):
    return _textured(anat, rng, (-0.7, -0.1), (0.12, 0.2), 35, 0.25, 0.24)


def _infiltration(anat, rng):
    side, x, y = _lung_point(anat, rng, (-0.4, 0.4), margin=0.12)
    mask = _blob(anat, rng, x, y, rng.uniform(0.12, 0.2), rng.uniform(0.14, 0.24), 0.1)
    mask = mask * _side_lung(anat, side)
    patches = smoothstep(blurred_noise(rng, anat.hw, 25) + 0.3)
    return mask, mask * (0.05 + 0.17 * patches), None


def _lung_opacity(anat, rng):
    side, x, y = _lung_point(anat, rng, (-0.5, 0.5), margin=0.12)
    mask = _blob(anat, rng, x, y, rng.uniform(0.1, 0.18), rng.uniform(0.12, 0.22), 0.06)
    mask = mask * _side_lung(anat, side)
    return mask, 0.17 * mask, 0.5 * mask


def _nodule(anat, rng):
    r = rng.uniform(0.035, 0.065) if rng.random() < 0.8 else rng.uniform(0.08, 0.12)  # mass
    _, x, y = _lung_point(anat, rng, (-0.6, 0.5), margin=r + 0.03)
    mask = _disk(anat, x, y, r)
    return mask, 0.26 * mask, None


def _other(anat, rng):
    """A thick-walled cavity: bright ring, lucent centre (a look no other class has)."""
    r, wall = rng.uniform(0.065, 0.1), rng.uniform(0.02, 0.03)
    _, x, y = _lung_point(anat, rng, (-0.6, 0.3), margin=r + 0.03)
    d = np.hypot(anat.X - x, anat.Y - y)
    mask = inside(d - r, 0.012)
    ring = mask * inside(np.abs(d - r + wall / 2) - wall / 2, 0.01)
    return mask, 0.3 * ring - 0.04 * (mask - ring), None


def _effusion(anat, rng):
    side = int(rng.choice(SIDES))
    lung = anat.lungs[side]
    _, cp_y = lung.costophrenic()
    level = cp_y - rng.uniform(0.22, 0.42)
    rel = np.clip((side * anat.X - (lung.xc - lung.ax)) / (2 * lung.ax), 0, 1)
    meniscus = level - 0.16 * rel**2  # fluid climbs the lateral chest wall
    # fluid replaces the air of the visible lung only (not behind the heart)
    mask = inside(meniscus - anat.Y, 0.03) * np.minimum(_side_lung(anat, side), anat.lung_open)
    return mask, mask * (LUNG_DEPTH + 0.02), mask


def _thickening(anat, rng):
    side = int(rng.choice(SIDES))
    lung = anat.lungs[side]
    thick = max(rng.uniform(0.04, 0.06), 3.0 / anat.unit)  # >= 3 px on small images
    y0 = lung.yc + lung.ay * rng.uniform(-0.55, 0.2)
    y1 = y0 + rng.uniform(0.22, 0.4)
    edge = np.nan_to_num(lung.lateral_x(anat.Y), nan=-1.0)
    depth = edge - side * anat.X  # distance inwards from the lateral pleura
    band = inside(np.abs(depth - thick / 2 + 0.005) - thick / 2, 0.01)
    span = inside(y0 - anat.Y, 0.02) * inside(anat.Y - y1, 0.02)
    mask = band * span
    return mask, 0.24 * mask, None


def _pneumothorax(anat, rng):
    side = int(rng.choice(SIDES))
    field = _side_lung(anat, side)
    dist = cv2.distanceTransform((field >= 0.5).astype(np.uint8), cv2.DIST_L2, 5) / anat.unit
    gap = rng.uniform(0.06, 0.11)
    lung = anat.lungs[side]
    cut = lung.yc + lung.ay * rng.uniform(-0.2, 0.25)  # apical to lateral extent
    upper = inside(anat.Y - cut, 0.05)
    air = inside(dist - gap, 0.01) * field * upper
    line = inside(np.abs(dist - gap) - max(0.008, 1.2 / anat.unit), 0.006) * upper * (dist > 0)
    mask = np.maximum(air, line)
    return mask, 0.14 * line - 0.05 * air, air


RENDERERS: dict[int, Callable] = {
    NAME_TO_ID["Aortic enlargement"]: _aortic_enlargement,
    NAME_TO_ID["Atelectasis"]: _atelectasis,
    NAME_TO_ID["Calcification"]: _calcification,
    NAME_TO_ID["Cardiomegaly"]: _cardiomegaly,
    NAME_TO_ID["Consolidation"]: _consolidation,
    NAME_TO_ID["ILD"]: _ild,
    NAME_TO_ID["Infiltration"]: _infiltration,
    NAME_TO_ID["Lung Opacity"]: _lung_opacity,
    NAME_TO_ID["Nodule/Mass"]: _nodule,
    NAME_TO_ID["Other lesion"]: _other,
    NAME_TO_ID["Pleural effusion"]: _effusion,
    NAME_TO_ID["Pleural thickening"]: _thickening,
    NAME_TO_ID["Pneumothorax"]: _pneumothorax,
    NAME_TO_ID["Pulmonary fibrosis"]: _fibrosis,
}


def render_lesion(class_id: int, anat: Anatomy, rng: np.random.Generator, tries: int = 8) -> Lesion:
    """Draw one finding of ``class_id`` on ``anat`` (after ``render_anatomy``)."""
    if class_id not in RENDERERS:
        raise ValueError(f"no lesion renderer for class_id {class_id}")
    for _ in range(tries):
        mask, delta, clear = RENDERERS[class_id](anat, rng)
        box = mask_box(mask)
        if box is not None and min(box[2] - box[0], box[3] - box[1]) >= MIN_BOX_PX:
            return Lesion(class_id, delta.astype(np.float32), box,
                          None if clear is None else clear.astype(np.float32))
    raise RuntimeError(f"could not place a class {class_id} lesion inside a {anat.hw} image")
