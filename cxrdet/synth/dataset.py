"""``generate_dataset``: plan, render and write a synthetic VinBigData-like dataset.

Layout written under ``out_dir``::

    train/<image_id>.dicom   test/<image_id>.dicom
    train.csv   3 readers per image
    test.csv    consensus labels, rad_id "consensus"
    synth_config.json   the settings that made it (rerun them for the same bytes)
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cxrdet.classes import CLASS_NAMES, NUM_FINDINGS
from cxrdet.errors import UserError


class SynthConfigError(UserError):
    """A SynthConfig value out of range; ``field`` names it, so a command can name its flag."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class DatasetExists(UserError):
    """The output folder holds a dataset and overwriting was not asked for."""
from cxrdet.formats.atomic import atomic_path, write_text
from cxrdet.synth.acquisition import dicom_tags, encode
from cxrdet.synth.annotate import LABEL_COLUMNS, ReaderConfig, consensus_rows, reader_rows
from cxrdet.synth.lesions import render_lesion
from cxrdet.synth.phantom import render_anatomy, sample_anatomy
from cxrdet.synth.plan import SPLITS, ImageSpec, plan_split, stream

FORMAT_VERSION = 1
CONFIG_NAME = "synth_config.json"
ANATOMY, TEXTURE, LESIONS, NOISE, LABELS = range(5)  # the per-image random streams


@dataclass
class SynthConfig:
    n_train: int = 200  # enough for a CPU demo detector to learn the frequent classes
    n_test: int = 60  # a held-out split large enough for a meaningful mAP
    scale: float = 0.25  # of the real sizes: long side about 600-850 px, quick on a CPU
    seed: int = 0  # same seed, same bytes
    normal_fraction: float = 0.667  # about two thirds normal, as in VinBigData (70.7%)
    workers: int = 1  # processes rendering/writing images; output does not depend on it
    overwrite: bool = False  # refuse to write over an existing dataset unless asked
    readers: ReaderConfig = field(default_factory=ReaderConfig)  # reader noise on train labels
    progress: bool = True  # show a tqdm bar

    def validate(self) -> None:
        checks = [
            ("n_train", self.n_train >= 1, f"n_train must be at least 1, got {self.n_train}"),
            ("n_test", self.n_test >= 1, f"n_test must be at least 1, got {self.n_test}"),
            ("scale", 0.05 <= self.scale <= 1.0,
             f"scale must be in [0.05, 1] (1 = real VinBigData sizes), got {self.scale}"),
            ("normal_fraction", 0.0 <= self.normal_fraction <= 1.0,
             f"normal_fraction must be in [0, 1], got {self.normal_fraction}"),
            ("workers", self.workers >= 1, f"workers must be at least 1, got {self.workers}"),
            ("seed", 0 <= self.seed < 2**63, f"seed must be a non-negative integer, got {self.seed}"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise SynthConfigError(name, message)


@dataclass
class SynthSummary:
    out_dir: Path
    train_dir: Path
    test_dir: Path
    train_csv: Path
    test_csv: Path
    n_train: int
    n_test: int
    n_train_normal: int
    n_test_normal: int
    findings_per_class: dict[str, int]  # true findings drawn (train + test), by class name


@dataclass
class RenderedImage:
    image: np.ndarray  # float32 display image in [0, 1]
    boxes: np.ndarray  # [N, 4] true lesion boxes, image pixels
    class_ids: np.ndarray  # [N]


def render_image(spec: ImageSpec, with_lesions: bool = True) -> RenderedImage:
    """Render one planned image. ``with_lesions=False`` gives the same patient without its
    findings (same anatomy and noise), which tests use to measure lesion visibility."""
    acq = spec.acquisition
    hw = (acq.rows, acq.cols)
    anat = sample_anatomy(stream(spec.seed, ANATOMY), hw, spec.age or 50, spec.sex)
    base, markings = render_anatomy(anat, stream(spec.seed, TEXTURE))
    rng = stream(spec.seed, LESIONS)
    lesions = [render_lesion(c, anat, rng) for c in spec.findings] if with_lesions else []
    image = base.copy()
    keep = np.ones(hw, np.float32)
    for lesion in lesions:
        image += lesion.delta
        if lesion.clear_markings is not None:
            keep = np.minimum(keep, 1 - lesion.clear_markings)
    image += markings * keep
    noise = stream(spec.seed, NOISE)
    image += noise.normal(0, noise.uniform(0.006, 0.014), hw).astype(np.float32)  # quantum noise
    boxes = np.array([les.box for les in lesions], dtype=np.float64).reshape(-1, 4)
    class_ids = np.array([les.class_id for les in lesions], dtype=int)
    return RenderedImage(np.clip(image, 0, 1), boxes, class_ids)


def write_image(spec: ImageSpec, out_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Render ``spec`` and write its DICOM; returns the true (boxes, class_ids)."""
    from cxrdet.dicomio.write import write_dicom

    rendered = render_image(spec)
    path = out_dir / spec.split / f"{spec.image_id}.dicom"
    with atomic_path(path) as tmp:  # a killed run never leaves a half-written file under the final name
        write_dicom(tmp, encode(rendered.image, spec.acquisition), patient_age=spec.patient_age,
                    patient_sex=spec.sex, **dicom_tags(spec.acquisition))
    return rendered.boxes, rendered.class_ids


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # the processes already use the cores


def _write_all(specs: list[ImageSpec], out_dir: Path, cfg: SynthConfig) -> list[tuple]:
    bar = dict(total=len(specs), desc="synth", unit="img", disable=not cfg.progress)
    args = (specs, [out_dir] * len(specs))
    if cfg.workers == 1:
        return list(tqdm(map(write_image, *args), **bar))
    ctx = multiprocessing.get_context("spawn")  # safe when the caller has torch/threads loaded
    with ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_init_worker) as pool:
        return list(tqdm(pool.map(write_image, *args, chunksize=2), **bar))


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to mix with an existing dataset unless ``overwrite``; an unfinished synth run
    (config written, CSVs not yet) is simply redone, so an interrupted run can be rerun."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output folder {out_dir} is a file; give a folder path (it is created if missing)")
    labels = [p for p in (out_dir / "train.csv", out_dir / "test.csv") if p.exists()]
    images = [p for split in SPLITS if (out_dir / split).is_dir()
              for pattern in ("*.dicom", "*.partial") for p in sorted((out_dir / split).glob(pattern))]
    unfinished_synth = (out_dir / CONFIG_NAME).exists() and not labels
    if (labels or (images and not unfinished_synth)) and not overwrite:
        found = (labels + images)[0].relative_to(out_dir)
        raise DatasetExists(f"{out_dir} already holds a dataset ({found}); choose another folder or "
                            "overwrite it (SynthConfig.overwrite)")
    for p in labels + images:  # stale images of a larger earlier run would linger unlabelled
        p.unlink()


def _write_csv(path: Path, rows: list[dict]) -> Path:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=LABEL_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return write_text(path, buf.getvalue())


def _config_json(cfg: SynthConfig) -> str:
    d = asdict(cfg)
    for transient in ("workers", "overwrite", "progress"):
        d.pop(transient)
    return json.dumps({"format_version": FORMAT_VERSION, **d}, indent=2, sort_keys=True) + "\n"


def generate_dataset(out_dir: str | os.PathLike, config: SynthConfig | None = None) -> SynthSummary:
    """Write a synthetic VinBigData-like dataset to ``out_dir`` (see the module docstring)."""
    cfg = config or SynthConfig()
    cfg.validate()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, cfg.overwrite)
    try:
        for split in SPLITS:
            (out_dir / split).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output folder {out_dir}: {e.strerror}") from None
    write_text(out_dir / CONFIG_NAME, _config_json(cfg))  # first: marks the folder as ours
    specs = {s: plan_split(cfg.seed, s, n, cfg.normal_fraction, cfg.scale)
             for s, n in zip(SPLITS, (cfg.n_train, cfg.n_test))}
    truths = _write_all(specs["train"] + specs["test"], out_dir, cfg)
    train_rows, test_rows = [], []
    counts = np.zeros(NUM_FINDINGS, dtype=int)
    for spec, (boxes, class_ids) in zip(specs["train"] + specs["test"], truths):
        hw = (spec.acquisition.rows, spec.acquisition.cols)
        np.add.at(counts, class_ids, 1)
        if spec.split == "train":
            rng = stream(spec.seed, LABELS)
            train_rows += reader_rows(spec.image_id, boxes, class_ids, hw, rng, cfg.readers)
        else:
            test_rows += consensus_rows(spec.image_id, boxes, class_ids)
    return SynthSummary(
        out_dir=out_dir,
        train_dir=out_dir / "train",
        test_dir=out_dir / "test",
        train_csv=_write_csv(out_dir / "train.csv", train_rows),
        test_csv=_write_csv(out_dir / "test.csv", test_rows),
        n_train=cfg.n_train,
        n_test=cfg.n_test,
        n_train_normal=sum(s.normal for s in specs["train"]),
        n_test_normal=sum(s.normal for s in specs["test"]),
        findings_per_class={CLASS_NAMES[c]: int(n) for c, n in enumerate(counts)},
    )
