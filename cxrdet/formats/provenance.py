"""Which detector predicted which images: the ``<out stem>.provenance.json`` beside a submission.

``cxrdet train-gate --detections`` needs OUT-OF-FOLD detections: every image's boxes must come
from a detector that did not train on it. A list of detector runs cannot tell that (fold 0's
predictions for every image pass when all fold runs are listed), so ``cxrdet infer`` records,
beside its --out CSV, the detector artifacts it ran (with the folds file and validation fold
each was trained with, from its config.json) and the ids it predicted; ``cxrdet
merge-submissions`` concatenates the records of its inputs; train-gate checks each image
against the artifacts that predicted it. Format (version 1)::

    {"format": "cxrdet-infer-provenance", "version": 1,
     "runs": [{"models": [{"artifact": DIR, "folds": FOLDS.csv or "", "fold": K}],
               "folds": FOLDS.csv or null, "fold": K or null, "shard": "i/n" or null,
               "tta": "none", "image_ids": [...]}]}

``folds``/``fold`` of a run are what infer was asked to predict (``--folds/--fold``); those of
a model are what it trained with, which is what decides whether a prediction is out-of-fold.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from cxrdet.errors import UserError
from cxrdet.formats import atomic

FORMAT = "cxrdet-infer-provenance"
VERSION = 1


def provenance_path(csv_path: str | os.PathLike) -> Path:
    """The sidecar of a submission CSV: ``oof.csv`` -> ``oof.provenance.json``."""
    return Path(csv_path).with_suffix(".provenance.json")


def model_record(artifact_dir: str | os.PathLike, folds: str, fold: int) -> dict:
    """One detector artifact and the split it was trained with (its config.json's folds/fold)."""
    artifact = Path(artifact_dir).resolve()
    return {"artifact": str(artifact), "folds": resolve_folds(folds, artifact), "fold": int(fold)}


def resolve_folds(folds: str, artifact: Path) -> str:
    """An absolute path for a folds file named in a config (relative names were written from
    the working directory of training, or from inside the run folder)."""
    if not folds:
        return ""
    path = Path(folds)
    for candidate in (path, artifact / path, artifact.parent / path):
        if candidate.is_file():
            return str(candidate.resolve())
    return str(path)  # not found now: train-gate says so when it needs the file


def write_provenance(csv_path: str | os.PathLike, runs: list[dict]) -> Path:
    """Write the sidecar of ``csv_path`` (atomically, like the CSV)."""
    return atomic.write_json(provenance_path(csv_path), {"format": FORMAT, "version": VERSION, "runs": runs},
                             indent=1)


def read_provenance(path: str | os.PathLike) -> list[dict]:
    """The runs of a sidecar, checked enough that a stale or foreign file is refused clearly."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or bad UTF-8
        raise UserError(f"cannot read provenance file {path}: {e}. Fix: rerun `cxrdet infer`, or delete it") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise UserError(f"{path}: not a {FORMAT} version {VERSION} file. Fix: rerun `cxrdet infer`, or delete it")
    runs = doc.get("runs")
    ok = isinstance(runs, list) and all(
        isinstance(r, dict) and _strings(r.get("image_ids")) and isinstance(r.get("models"), list)
        and all(_model_ok(m) for m in r["models"]) for r in runs)
    if not ok:
        raise UserError(f"{path}: malformed 'runs' (each needs models [artifact, folds, fold] and image_ids: "
                        "artifact and folds strings, fold an integer, image_ids strings). "
                        "Fix: rerun `cxrdet infer`, or delete it")
    return runs


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _model_ok(m) -> bool:
    return (isinstance(m, dict) and isinstance(m.get("artifact"), str) and isinstance(m.get("folds"), str)
            and isinstance(m.get("fold"), int) and not isinstance(m.get("fold"), bool))


def collect_provenance(csv_paths: Sequence[str | os.PathLike]) -> tuple[list[dict] | None, list[Path]]:
    """The runs of all sidecars of ``csv_paths`` (read and checked, nothing written).

    Returns ``(runs, [])``, or ``(None, sidecars that do not exist)``: a merged record missing
    some inputs' runs would be wrong about them, so there is then no merged record at all.
    """
    missing = [provenance_path(p) for p in csv_paths if not provenance_path(p).is_file()]
    if missing:
        return None, missing
    return [run for p in csv_paths for run in read_provenance(provenance_path(p))], []


def write_merged_provenance(out_csv: str | os.PathLike, runs: list[dict] | None) -> Path | None:
    """Write the merged record beside ``out_csv``; with ``runs`` None remove any old one there
    (a stale record beside a new CSV would be worse than none)."""
    if runs is None:
        provenance_path(out_csv).unlink(missing_ok=True)
        return None
    return write_provenance(out_csv, runs)
