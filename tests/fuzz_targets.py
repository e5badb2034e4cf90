"""Every reader of a file a user hands us, as a fuzz target: valid seed files, the strategy that
breaks them, the call, the errors it may raise, and what an accepted result must satisfy.

The harness (``Target``, the property ``run_example``) is in ``fuzz_core.py``; the targets of
the classifier's files and of the two network services are in ``fuzz_targets_classifier.py``
and ``fuzz_targets_services.py``. :data:`TARGET_FACTORIES` lists them all; it is what
``tests/test_fuzz_readers.py`` and ``benchmarks/fuzz_readers.py`` run.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from fuzz_core import Escaped, Target, check_config_fields, ids, mutants, numbers, probabilities, run_example, workdir  # noqa: F401 (the API)
import fuzz_targets_classifier
import fuzz_targets_services
from fuzz_images import dicom_seeds, dicom_strategy, image_seeds, image_strategy
from fuzz_strategies import floats, csv_documents, mutated_json

from cxrdet.dicomio.errors import BadDicomError
from cxrdet.errors import InputFailure


# ------------------------------------------------------------------------------ label CSV
LABELS = (
    "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
    "a1,Aortic enlargement,0,R9,691.0,1375.0,1653.0,1831.0\n"
    "a1,Cardiomegaly,3,R10,1000,1500,1600,1900\n"
    "b2,No finding,14,R1,,,,\n"
    "c3,Pleural effusion,10,R8,10.5,20.25,300,400\n"
)


def _check_labels(df) -> None:
    cid = df["class_id"].to_numpy()
    assert ((cid >= 0) & (cid <= 14)).all(), cid
    xy = df[["x_min", "y_min", "x_max", "y_max"]].to_numpy()
    finding = cid != 14
    assert np.isfinite(xy[finding]).all() and (xy[finding, 2] > xy[finding, 0]).all()
    assert (df["image_id"].str.strip() != "").all()


def _labels() -> Target:
    from cxrdet.formats.labels import LABEL_COLUMNS, read_labels

    cells = {c: ids if c == "image_id" else st.sampled_from(["Cardiomegaly", "No finding", "Aortic enlargement"])
             if c == "class_name" else st.sampled_from(["0", "3", "14"]) if c == "class_id" else
             st.just("R1") if c == "rad_id" else numbers for c in LABEL_COLUMNS}
    return Target("labels", "train.csv", lambda: mutants([LABELS.encode()], csv_documents(LABEL_COLUMNS, cells)),
                  read_labels, _check_labels, valid=lambda: [LABELS.encode()])


# ------------------------------------------------------------------------------ FOLDS.csv
FOLDS = "image_id,fold\r\na1,0\r\nb2,1\r\nc3,2\r\nd4,0\r\n"


def _check_folds(folds) -> None:
    assert folds and all(isinstance(k, str) and k.strip() == k and k for k in folds), folds
    assert all(isinstance(v, int) and v >= 0 for v in folds.values()), folds


def _folds() -> Target:
    from cxrdet.formats.folds import read_folds

    structured = csv_documents(["image_id", "fold"], {"image_id": ids, "fold": st.integers(-2, 5).map(str)})
    return Target("folds", "FOLDS.csv", lambda: mutants([FOLDS.encode()], structured), read_folds, _check_folds,
                  valid=lambda: [FOLDS.encode()])


# ------------------------------------------------------------------------------ submission CSV
SUBMISSION = (
    "image_id,PredictionString\r\n"
    "a1,0 0.9 691 1375 1653 1831 3 0.5 1000 1500 1600 1900\r\n"
    "b2,14 1 0 0 1 1\r\n"
    "c3,\r\n"
    "d4,10 0.25 10.5 20.25 300 400\r\n"
)
prediction_strings = st.lists(
    st.tuples(st.integers(-1, 15), floats(-0.5, 1.5), floats(-10, 2000), floats(-10, 2000),
              floats(-10, 3000), floats(-10, 3000)).map(lambda t: " ".join(f"{x:g}" for x in t)),
    max_size=5).map(" ".join)


def _check_submission(result) -> None:
    frame, listed = result
    v = frame[["class_id", "score", "x_min", "y_min", "x_max", "y_max"]].to_numpy(dtype=np.float64)
    assert np.isfinite(v).all()
    assert ((v[:, 0] >= 0) & (v[:, 0] <= 14)).all() and ((v[:, 1] >= 0) & (v[:, 1] <= 1)).all()
    assert ((v[:, 4] > v[:, 2]) & (v[:, 5] > v[:, 3])).all()
    assert len(set(listed)) == len(listed) and all(k.strip() == k and k for k in listed)


def _submission() -> Target:
    from cxrdet.formats.submission import HEADER, read_submission

    structured = csv_documents(HEADER, {"image_id": ids, "PredictionString": prediction_strings})
    return Target("submission", "sub.csv", lambda: mutants([SUBMISSION.encode()], structured),
                  lambda p: read_submission(p, with_ids=True), _check_submission,
                  valid=lambda: [SUBMISSION.encode()])


def _merge_submission() -> Target:
    """``cxrdet merge-submissions`` reads shard CSVs with its own row reader."""
    from cxrdet.formats.submission import HEADER
    from cxrdet.inference.merge import _check_prediction, merge_rows

    structured = csv_documents(HEADER, {"image_id": ids, "PredictionString": prediction_strings})
    return Target("merge_submission", "shard.csv", lambda: mutants([SUBMISSION.encode()], structured),
                  lambda p: merge_rows([str(p)], HEADER, _check_prediction), valid=lambda: [SUBMISSION.encode()])


# ------------------------------------------------------------------------------ PNG sizes CSV
PNG_SIZES = "image_id,dim0,dim1\na1,2880,2304\nb2,3072,2540\nc3,2048,2048\n"


def _check_sizes(sizes) -> None:
    assert all(isinstance(k, str) and k for k in sizes), sizes
    assert all(isinstance(h, int) and isinstance(w, int) and h >= 1 and w >= 1 for h, w in sizes.values())


def _png_sizes() -> Target:
    from cxrdet.inference.sources import read_png_sizes

    structured = csv_documents(["image_id", "dim0", "dim1"], {"image_id": ids, "dim0": numbers, "dim1": numbers})
    return Target("png_sizes", "sizes.csv", lambda: mutants([PNG_SIZES.encode()], structured),
                  read_png_sizes, _check_sizes, valid=lambda: [PNG_SIZES.encode()])


# ------------------------------------------------------------------------------ image-level CSV
def _image_level_seed() -> str:
    from cxrdet.formats.image_level import IMAGE_LEVEL_COLUMNS

    rows = [",".join(IMAGE_LEVEL_COLUMNS)]
    for i, image_id in enumerate(["a1", "b2", "c3"]):
        p = "" if i == 2 else f"{0.1 * (i + 1):.6g}"
        rows.append(",".join([image_id, p] + [f"{(i + k) % 10 / 10:.6g}" for k in range(14)]))
    return "\n".join(rows) + "\n"


def _check_image_level(df) -> None:
    v = df.drop(columns="image_id").to_numpy(dtype=np.float64)
    assert (np.isnan(v) | ((v >= 0) & (v <= 1))).all()
    assert df["image_id"].is_unique


def _image_level() -> Target:
    from cxrdet.formats.image_level import IMAGE_LEVEL_COLUMNS, read_image_level

    cells = {c: ids if c == "image_id" else probabilities for c in IMAGE_LEVEL_COLUMNS}
    return Target("image_level", "il.csv",
                  lambda: mutants([_image_level_seed().encode()], csv_documents(IMAGE_LEVEL_COLUMNS, cells)),
                  read_image_level, _check_image_level, valid=lambda: [_image_level_seed().encode()])


# ------------------------------------------------------------------------------ provenance JSON
PROVENANCE = {
    "format": "cxrdet-infer-provenance", "version": 1,
    "runs": [{"models": [{"artifact": "/runs/f0/export", "folds": "/data/FOLDS.csv", "fold": 0}],
              "folds": "/data/FOLDS.csv", "fold": 0, "shard": "0/2", "tta": "none", "image_ids": ["a1", "b2"]}],
}


def _check_provenance(runs) -> None:
    for run in runs:
        assert all(isinstance(i, str) for i in run["image_ids"]), run
        for m in run["models"]:
            assert isinstance(m["artifact"], str) and isinstance(m["folds"], str), m
            assert isinstance(m["fold"], int) and not isinstance(m["fold"], bool), m


def _provenance() -> Target:
    from cxrdet.formats.provenance import read_provenance

    return Target("provenance", "sub.provenance.json", lambda: mutated_json(PROVENANCE), read_provenance,
                  _check_provenance, valid=lambda: [json.dumps(PROVENANCE).encode()])


# ------------------------------------------------------------------------------ gate schema JSON
@functools.lru_cache(maxsize=None)
def _gate_files() -> tuple[dict, bytes]:
    """A tiny trained gate's schema (parsed) and booster bytes."""
    import pandas as pd

    from cxrdet.gate.model import MODEL_FILE, SCHEMA_FILE, GateClassifier

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"meta_age": rng.uniform(20, 80, 40), "px_mean": rng.uniform(0, 1, 40),
                      "meta_sex": pd.Categorical(rng.choice(["F", "M"], 40))})
    y = (X["px_mean"] > 0.5).astype(int).to_numpy()
    folder = workdir() / "gate_seed"
    GateClassifier(n_estimators=5, n_folds=2, early_stopping_rounds=2, n_jobs=1).fit(X, y).save(folder)
    return json.loads((folder / SCHEMA_FILE).read_text()), (folder / MODEL_FILE).read_bytes()


def _check_gate(gate) -> None:
    assert math.isfinite(gate.low_) and math.isfinite(gate.high_) and 0 <= gate.low_ < gate.high_
    assert all(isinstance(n, str) for n in gate.schema_.names)
    assert list(gate.schema_.kinds) == gate.schema_.names  # names unique, each with a kind
    assert all(k in ("float", "category") for k in gate.schema_.kinds.values())
    assert all(all(isinstance(c, str) for c in v) for v in gate.schema_.categories.values())


def _gate_schema() -> Target:
    from cxrdet.gate.model import MODEL_FILE, GateClassifier

    def setup(folder: Path) -> None:
        (folder / MODEL_FILE).write_bytes(_gate_files()[1])

    return Target("gate_schema", "gate_schema.json", lambda: mutated_json(_gate_files()[0]),
                  lambda p: GateClassifier.load(p.parent), _check_gate, setup=setup, named=lambda p: p.parent,
                  valid=lambda: [json.dumps(_gate_files()[0]).encode()])


# ------------------------------------------------------------------------------ detector config JSON
def _detector_config() -> Target:
    from cxrdet.detector.config import DetectorConfig

    seed = DetectorConfig(cache="c.h5", labels="train.csv", folds="FOLDS.csv", out="run").to_dict()
    return Target("detector_config", "config.json", lambda: mutated_json(seed), DetectorConfig.load, check_config_fields,
                  valid=lambda: [json.dumps(seed).encode()])


# ------------------------------------------------------------------------------ DICOM bytes
def _check_dicom(result) -> None:
    image, meta = result
    assert image.ndim == 2 and image.dtype == np.float32 and image.size > 0, image.shape
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1, (image.min(), image.max())


def _read_dicom_both(path: Path):
    from cxrdet.dicomio.meta import read_metadata
    from cxrdet.dicomio.read import read_dicom

    read_metadata(path)
    return read_dicom(path, reduce_to=8)


def _dicom() -> Target:
    return Target("dicom", "x.dcm", dicom_strategy, _read_dicom_both, _check_dicom, allowed=(BadDicomError,),
                  valid=dicom_seeds)


# ------------------------------------------------------------------------------ PNG / JPEG bytes
def _check_png(grey) -> None:
    assert grey.dtype == np.uint8 and grey.ndim == 2 and grey.size > 0, (grey.dtype, grey.shape)


def _png() -> Target:
    from cxrdet.inference.sources import read_png

    return Target("png", "a1.png", image_strategy, read_png, _check_png, allowed=(InputFailure,), valid=image_seeds)


TARGET_FACTORIES = {
    "labels": _labels, "folds": _folds, "submission": _submission, "merge_submission": _merge_submission,
    "png_sizes": _png_sizes, "image_level": _image_level, "provenance": _provenance,
    "gate_schema": _gate_schema, "detector_config": _detector_config, "dicom": _dicom, "png": _png,
    **fuzz_targets_classifier.TARGET_FACTORIES, **fuzz_targets_services.TARGET_FACTORIES,
}


@functools.lru_cache(maxsize=None)
def target(name: str) -> Target:
    return TARGET_FACTORIES[name]()


def cleanup() -> None:
    fuzz_targets_services.close()
    shutil.rmtree(workdir(), ignore_errors=True)
