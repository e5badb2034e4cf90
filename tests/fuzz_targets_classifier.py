"""Fuzz targets of the classifier's inputs: the label sources of ``--labels`` (an NIH-style CSV,
a VinBigData CSV and a folder per class, through :func:`read_label_source`), the probability
CSV of ``cxrdet classify`` and the classifier's ``config.json``. Registered in
``fuzz_targets.TARGET_FACTORIES``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from fuzz_core import Target, check_config_fields, ids, mutants, probabilities
from fuzz_strategies import csv_documents, mutated_json

# ------------------------------------------------------------------------------ NIH-style CSV
NIH = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
    "00000001_000.png,Cardiomegaly,0,1,58,M,PA\n"
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA\n"
    "00000002_000.png,No Finding,0,2,81,M,PA\n"
    "00000003_000.png,Hernia|Infiltration|Nodule,0,3,81,F,AP\n"
)
# a VinBigData header sends read_label_source down the other branch: its dispatch is fuzzed too
VINBIG = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\na1,Cardiomegaly,3,R1,1,2,30,40\nb2,No finding,14,R2,,,,\n"
image_index = st.sampled_from(["00000001_000.png", "00000002_000.png", "x.PNG", " y.png ", ".png", "a/b.png",
                               "c\\d.png", "noext", "..", "图像.png", "00000001_000.jpg"])
findings = st.lists(st.sampled_from(["Cardiomegaly", "Hernia", "No Finding", "", " Nodule ", "a|b", "图"]),
                    max_size=3).map("|".join)


def check_label_set(labels) -> None:
    """An accepted LabelSet is usable: unique non-empty ids and classes, targets of the task."""
    n, c = len(labels.image_ids), len(labels.class_names)
    assert n > 0 and c > 0 and len(set(labels.image_ids)) == n, labels.image_ids
    assert all(isinstance(i, str) and i and "/" not in i for i in labels.image_ids), labels.image_ids
    assert all(isinstance(k, str) and k for k in labels.class_names) and len(set(labels.class_names)) == c
    if labels.task == "multiclass":
        assert c >= 2 and labels.targets.shape == (n,) and ((labels.targets >= 0) & (labels.targets < c)).all()
    else:
        t = labels.targets
        assert labels.task == "multilabel" and t.shape == (n, c), (labels.task, t.shape)
        assert np.isfinite(t).all() and ((t >= 0) & (t <= 1)).all()


def _nih() -> Target:
    from cxrdet.classifier.labels import read_label_source

    structured = csv_documents(["Image Index", "Finding Labels", "Patient Age"],
                               {"Image Index": image_index, "Finding Labels": findings, "Patient Age": ids})
    seeds = [NIH.encode(), VINBIG.encode()]
    return Target("nih_labels", "Data_Entry_2017.csv", lambda: mutants(seeds, structured), read_label_source,
                  check_label_set, valid=lambda: seeds)


# ------------------------------------------------------------------------------ folder per class
# The fuzzed "file" is a JSON description of a tree (paths and symlinks), built fresh as
# ``tree/`` beside it for each example: the reader under test takes the folder.
folder_names = st.sampled_from(["Normal", "Pneumonia", "Lung Opacity", "a__b", "a", "b", ".hidden", "é", "图像",
                                "..x", " ", "-", "x.png", "COVID-19"])
file_names = st.sampled_from(["img1.png", "img1.jpg", "IMG2.PNG", "x.jpeg", "notes.txt", ".h.png", "a__b.png",
                              "b.png", "noext", "x.png.png", " .png", "é.png", "Thumbs.db"])
tree_paths = st.tuples(st.lists(folder_names, max_size=3), file_names).map(lambda t: [*t[0], t[1]])
link_targets = st.sampled_from(["..", ".", "/nonexistent", "img1.png", "../Normal", "/"])
TREE_SEED = {"files": [["Normal", "n1.png"], ["Normal", "n2.jpg"], ["Pneumonia", "p1.png"],
                       ["Pneumonia", "batch 2", "p2.jpeg"], ["root.png"]], "links": []}


def _tree_strategy() -> st.SearchStrategy[bytes]:
    links = st.lists(st.tuples(tree_paths, link_targets), max_size=2)
    trees = st.fixed_dictionaries({"files": st.lists(tree_paths, max_size=8), "links": links})
    edited = st.tuples(st.lists(tree_paths, max_size=3), links).map(
        lambda t: {"files": TREE_SEED["files"] + t[0], "links": t[1]})
    return st.one_of(trees, edited).map(lambda tree: json.dumps(tree).encode())


def build_tree(spec: Path) -> Path:
    """The folder a tree description stands for (``tree/`` beside it, made afresh)."""
    root = spec.parent / "tree"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    tree = json.loads(spec.read_text())
    for parts in tree["files"]:
        try:
            (root.joinpath(*parts[:-1])).mkdir(parents=True, exist_ok=True)
            root.joinpath(*parts).write_bytes(b"not decoded: the label source only lists files")
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            pass  # a name already taken by a file or folder: the tree simply lacks this one
    for parts, to in tree["links"]:
        try:
            root.joinpath(*parts[:-1]).mkdir(parents=True, exist_ok=True)
            os.symlink(to, root.joinpath(*parts))
        except (FileExistsError, NotADirectoryError):
            pass
    return root


def _label_folder() -> Target:
    from cxrdet.classifier.labels import read_label_source

    return Target("label_folder", "tree.json", _tree_strategy, lambda p: read_label_source(build_tree(p)),
                  check_label_set, named=lambda p: p.parent / "tree",
                  valid=lambda: [json.dumps(TREE_SEED).encode()])


# ------------------------------------------------------------------------------ probability CSV
PROBS = ('image_id,Aortic enlargement,"Nodule/Mass, any",No finding\r\n'
         "a1,0.1,0.9,0\r\nb2,1,0.5,0.25\r\nc3,0.000123,1e-05,0.999\r\n")


def check_probabilities(probs) -> None:
    n, c = probs.values.shape
    assert n == len(probs.image_ids) == len(set(probs.image_ids)) and c == len(probs.class_names) >= 1
    assert all(i and i.strip() == i for i in probs.image_ids), probs.image_ids
    assert all(k and k.strip() == k for k in probs.class_names) and len(set(probs.class_names)) == c
    assert np.isfinite(probs.values).all() and ((probs.values >= 0) & (probs.values <= 1)).all()


def _probabilities() -> Target:
    from cxrdet.formats.probabilities import read_probabilities

    header = ["image_id", "Cardiomegaly", "Nodule/Mass"]
    structured = csv_documents(header, {"image_id": ids, "Cardiomegaly": probabilities, "Nodule/Mass": probabilities})
    return Target("probabilities", "probs.csv", lambda: mutants([PROBS.encode()], structured), read_probabilities,
                  check_probabilities, valid=lambda: [PROBS.encode()])


# ------------------------------------------------------------------------------ classifier config JSON
def _classifier_config_seed() -> dict:
    from cxrdet.classifier.config import ClassifierConfig

    return ClassifierConfig(cache="c.h5", labels="train.csv", folds="FOLDS.csv", out="run", cache_size=512,
                            task="multilabel", class_names=["Cardiomegaly", "abnormal"],
                            pos_weight=[2.5, 1.0]).to_dict()


def check_classifier_config(cfg) -> None:
    check_config_fields(cfg)
    assert 16 <= cfg.size <= 4096 and cfg.batch_size >= 1 and cfg.lr > 0 and math.isfinite(cfg.lr), cfg
    assert not cfg.pos_weight or len(cfg.pos_weight) == len(cfg.class_names), cfg


def _classifier_config() -> Target:
    from cxrdet.classifier.config import ClassifierConfig

    seed = _classifier_config_seed()
    return Target("classifier_config", "config.json", lambda: mutated_json(seed), ClassifierConfig.load,
                  check_classifier_config, valid=lambda: [json.dumps(seed).encode()])


TARGET_FACTORIES = {"nih_labels": _nih, "label_folder": _label_folder, "probabilities": _probabilities,
                    "classifier_config": _classifier_config}


# ------------------------------------------------------------------------------ heatmaps HDF5 (classify --cam-raw)
def _heatmap_seed() -> bytes:
    import tempfile

    from cxrdet.formats.heatmaps import HeatmapRecord, HeatmapWriter

    folder = Path(tempfile.mkdtemp(prefix="cxrdet-fuzz-seed-"))
    w = HeatmapWriter(folder / "heatmaps.h5", ["Cardiomegaly", "abnormal"], "GradCAM", [{"artifact": "x"}])
    rng = np.random.default_rng(0)
    for k in range(2):
        w.add(HeatmapRecord(f"img{k}", (40, 30), [0, 1], [0.7, 0.2], rng.uniform(0, 1, (2, 8, 6))))
    data = w.close().read_bytes()
    shutil.rmtree(folder, ignore_errors=True)
    return data


def _read_all_heatmaps(path: Path):
    from cxrdet.formats.heatmaps import read_heatmaps

    names, records = read_heatmaps(path)
    return names, list(records)


def check_heatmaps(result) -> None:
    names, records = result
    assert names and all(isinstance(n, str) for n in names)
    for r in records:
        assert r.heatmaps.ndim == 3 and r.heatmaps.shape[0] == len(r.class_ids) == len(r.probability), r
        assert all(0 <= c < len(names) for c in r.class_ids) and np.isfinite(r.heatmaps).all()
        assert r.orig_hw[0] > 0 and r.orig_hw[1] > 0


def _heatmaps() -> Target:
    seed = _heatmap_seed()
    return Target("heatmaps", "heatmaps.h5", lambda: mutants([seed], text=False), _read_all_heatmaps,
                  check_heatmaps, valid=lambda: [seed])


TARGET_FACTORIES["heatmaps"] = _heatmaps
