"""The plan of a synthetic dataset: which images exist, which are normal, what they show.

Planning is cheap and runs in the main process; rendering each planned image then depends only
on its :class:`ImageSpec`, so ``--workers`` can never change the output.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from cxrdet.synth.acquisition import Acquisition, quota, sample_acquisitions

# images marked by at least 2 of 3 readers per class (docs/dataset.md), class_id order
CLASS_COUNTS = np.array([2346, 62, 177, 1817, 121, 152, 245, 547, 405, 362, 634, 882, 58, 1017], float)
CLASS_FLOOR = 0.025  # share every class gets at least, so rare classes show up in small sets
FINDINGS_PER_IMAGE = {1: 0.35, 2: 0.3, 3: 0.2, 4: 0.15}  # abnormal images carry 1-4 findings
SPLITS = ("train", "test")


@dataclass(frozen=True)
class ImageSpec:
    image_id: str
    split: str
    seed: tuple[int, int, int]  # (dataset seed, split number, index): the image's own streams
    findings: tuple[int, ...]  # class_ids to draw; empty for a normal image
    age: int
    sex: str
    acquisition: Acquisition

    @property
    def normal(self) -> bool:
        return not self.findings

    @property
    def patient_age(self) -> str | None:
        """DICOM AS string like ``045Y``; a few exports leave the age out (age 0 here)."""
        return f"{self.age:03d}Y" if self.age > 0 else None


def class_weights() -> np.ndarray:
    """Share of each finding class among all findings: VinBigData's, with a floor."""
    p = CLASS_COUNTS / CLASS_COUNTS.sum()
    p = np.maximum(p, CLASS_FLOOR)
    return p / p.sum()


def image_id_for(seed: int, split: str, index: int) -> str:
    """32 hex characters, like VinBigData's ids, derived from the seed."""
    return hashlib.sha256(f"cxrdet-synth|{seed}|{split}|{index}".encode()).hexdigest()[:32]


def stream(seed: tuple[int, int, int], purpose: int) -> np.random.Generator:
    """Independent random stream of one image for one purpose (anatomy, lesions, noise, labels)."""
    return np.random.default_rng(np.random.SeedSequence(seed[0], spawn_key=(*seed[1:], purpose)))


def _findings(rng: np.random.Generator, n_abnormal: int) -> list[tuple[int, ...]]:
    """Findings of each abnormal image: counts drawn 1-4, classes dealt out by quota so the
    whole set follows :func:`class_weights`, no class twice on one image."""
    counts = quota(rng, n_abnormal, FINDINGS_PER_IMAGE) if n_abnormal else []
    pool = quota(rng, int(sum(counts)), dict(enumerate(class_weights())))
    images: list[list[int]] = [[] for _ in counts]
    for i, k in enumerate(counts):
        for _ in range(k):
            j = next((j for j, c in enumerate(pool) if c not in images[i]), None)
            if j is None:
                break  # every class left in the pool is already on this image
            images[i].append(pool.pop(j))
    return [tuple(sorted(f)) for f in images]


def _age(rng: np.random.Generator, normal: bool) -> int:
    """Abnormal patients are older, as in the real data (gives the gate a metadata signal)."""
    if rng.random() < 0.03:
        return 0  # missing PatientAge
    mean, std = (41, 13) if normal else (57, 14)
    return int(np.clip(round(rng.normal(mean, std)), 15, 92))


def plan_split(seed: int, split: str, n: int, normal_fraction: float, scale: float) -> list[ImageSpec]:
    split_no = SPLITS.index(split)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_no,)))
    n_normal = int(round(n * normal_fraction))
    normal = np.zeros(n, dtype=bool)
    normal[rng.permutation(n)[:n_normal]] = True
    findings = iter(_findings(rng, n - n_normal))
    acqs = sample_acquisitions(rng, n, scale)
    specs = []
    for i in range(n):
        f = () if normal[i] else next(findings)
        specs.append(ImageSpec(
            image_id=image_id_for(seed, split, i),
            split=split,
            seed=(seed, split_no, i),
            findings=f,
            age=_age(rng, not f),
            sex="M" if rng.random() < 0.55 else "F",
            acquisition=acqs[i],
        ))
    return specs
