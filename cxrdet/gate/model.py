"""``GateClassifier``: XGBoost P(abnormal) per image, scikit-learn style, saved without pickle.

Training (``fit``) runs a stratified K-fold: each fold's booster grows until the log loss on the
fold's held-out part stops improving for ``early_stopping_rounds`` rounds; its predictions on
that part are the out-of-fold (OOF) probabilities. Log loss, not AUC, decides the stopping round:
the gate thresholds act on probabilities, so they must be calibrated, and AUC can peak on the
first tree (separable data) while the probabilities are still near the prior. Because the held-out part also picked the
stopping round, OOF AUC is slightly optimistic (one number tuned per fold, not per tree).
The final model is ONE booster trained on all rows for the mean best round count of the folds:
one file, one prediction path, and every row helps, instead of averaging K boosters.

Saved as ``gate.ubj`` (XGBoost UBJSON) + ``gate_schema.json`` (features, categories,
thresholds, training summary, versions). ``load`` checks both and ``p_abnormal`` refuses a
feature table that differs from the schema.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from cxrdet.errors import UserError
from cxrdet.formats import atomic
from cxrdet.gate.features import FeatureSchema
from cxrdet.gate.rescore import RESCORE_CHOICES
from cxrdet.gate.rules import DEFAULT_HIGH, DEFAULT_LOW

MODEL_FILE = "gate.ubj"
SCHEMA_FILE = "gate_schema.json"
SCHEMA_FORMAT = "cxrdet-gate-schema"
SCHEMA_VERSION = 1


class GateClassifier(ClassifierMixin, BaseEstimator):
    """Gradient-boosted normal (0) / abnormal (1) image classifier."""

    def __init__(
        self,
        n_estimators: int = 2000,  # upper bound; early stopping picks the real count
        learning_rate: float = 0.03,  # small steps: a few thousand rows, smooth probabilities
        max_depth: int = 4,  # shallow trees: metadata interactions are low-order
        min_child_weight: float = 2.0,  # no leaf for one or two odd images
        subsample: float = 0.8,  # row bagging against overfitting small sets
        colsample_bytree: float = 0.8,  # feature bagging: ~80 correlated detector columns
        reg_lambda: float = 1.0,  # XGBoost's default L2
        n_folds: int = 5,  # used when fit() gets no fold assignment
        early_stopping_rounds: int = 100,  # patience in rounds of the held-out log loss
        random_state: int = 0,  # seeds the folds and XGBoost's sampling
        n_jobs: int | None = None,  # XGBoost threads; None = all cores
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.n_folds = n_folds
        self.early_stopping_rounds = early_stopping_rounds
        self.random_state = random_state
        self.n_jobs = n_jobs

    # ----------------------------------------------------------------- training
    def fit(self, X: pd.DataFrame, y, folds: np.ndarray | None = None) -> "GateClassifier":
        """Cross-validate (OOF probabilities, AUC per fold), then train the final booster.

        ``folds``: optional fold number per row (e.g. from FOLDS.csv, so the gate's folds are
        the detector's); otherwise stratified K-fold with ``n_folds`` and ``random_state``.
        """
        X, y = _check_xy(X, y)
        schema = FeatureSchema.from_frame(X)
        data = schema.encode(X)
        fold_ids = self._fold_ids(y, folds)
        full = _dmatrix(data, y, self.n_jobs)  # converted once; folds are row slices of it
        oof = np.full(len(y), np.nan)
        fold_auc, best = [], []
        for k in np.unique(fold_ids):
            val = fold_ids == k
            held_out = full.slice(np.flatnonzero(val))
            booster = self._train(full.slice(np.flatnonzero(~val)), held_out)
            rounds = booster.best_iteration + 1
            oof[val] = booster.predict(held_out, iteration_range=(0, rounds))
            fold_auc.append(float(roc_auc_score(y[val], oof[val])))
            best.append(int(rounds))
        self.n_rounds_ = max(1, int(round(float(np.mean(best)))))
        self.booster_ = xgb.train(self._params(), full, num_boost_round=self.n_rounds_)
        self.schema_ = schema
        self.feature_names_ = list(schema.names)
        self.categories_ = {k: list(v) for k, v in schema.categories.items()}
        self.classes_ = np.array([0, 1])
        self.folds_ = fold_ids
        self.oof_proba_ = oof
        self.fold_auc_ = fold_auc
        self.best_iterations_ = best
        self.cv_auc_ = float(roc_auc_score(y, oof))
        self.n_train_ = int(len(y))
        self.n_abnormal_ = int(y.sum())
        self.set_thresholds(DEFAULT_LOW, DEFAULT_HIGH, "the standard defaults (VinBigData 2-class filter)")
        return self

    def _fold_ids(self, y: np.ndarray, folds: np.ndarray | None) -> np.ndarray:
        if folds is None:
            if np.bincount(y, minlength=2).min() < self.n_folds:
                raise UserError(
                    f"the gate needs at least {self.n_folds} normal and {self.n_folds} abnormal "
                    f"images for {self.n_folds}-fold cross-validation, found "
                    f"{np.bincount(y, minlength=2).tolist()} (normal, abnormal). "
                    f"Fix: label more images or use fewer folds (n_folds={self.n_folds})."
                )
            skf = StratifiedKFold(self.n_folds, shuffle=True, random_state=self.random_state)
            fold_ids = np.empty(len(y), dtype=np.int64)
            for k, (_, val) in enumerate(skf.split(np.zeros(len(y)), y)):
                fold_ids[val] = k
            return fold_ids
        fold_ids = np.asarray(folds).astype(np.int64).reshape(-1)
        if len(fold_ids) != len(y):
            raise ValueError(f"folds has {len(fold_ids)} entries for {len(y)} rows")
        if len(np.unique(fold_ids)) < 2:
            raise UserError("the fold assignment has a single fold; cross-validation needs at least 2")
        for k in np.unique(fold_ids):
            if len(np.unique(y[fold_ids == k])) < 2 or len(np.unique(y[fold_ids != k])) < 2:
                raise UserError(
                    f"fold {k} holds out only one class (normal/abnormal), so its AUC and early "
                    "stopping are undefined. Fix: use a stratified split (`cxrdet split`) or "
                    "fit without a fold assignment (folds=None) to let the gate stratify by itself."
                )
        return fold_ids

    def _params(self) -> dict:
        params = {
            "objective": "binary:logistic",
            "eval_metric": "logloss",
            "tree_method": "hist",
            "eta": self.learning_rate,
            "max_depth": self.max_depth,
            "min_child_weight": self.min_child_weight,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "lambda": self.reg_lambda,
            "seed": self.random_state,
            "verbosity": 0,
        }
        if self.n_jobs is not None:
            params["nthread"] = self.n_jobs
        return params

    def _train(self, train: xgb.DMatrix, held_out: xgb.DMatrix) -> xgb.Booster:
        return xgb.train(
            self._params(),
            train,
            num_boost_round=self.n_estimators,
            evals=[(held_out, "valid")],
            early_stopping_rounds=self.early_stopping_rounds,
            verbose_eval=False,
        )

    # ---------------------------------------------------------------- inference
    def p_abnormal(self, X: pd.DataFrame) -> np.ndarray:
        """P(abnormal) per row, shape ``[n]``; the table must match the schema exactly."""
        if not hasattr(self, "booster_"):
            raise RuntimeError("GateClassifier is not fitted: call fit() or GateClassifier.load()")
        if not isinstance(X, pd.DataFrame):
            raise UserError("the gate needs a pandas DataFrame from cxrdet.gate.features.build_features")
        self.schema_.check(X, getattr(self, "source_", "memory"))
        if len(X) == 0:
            return np.zeros(0)
        data = _dmatrix(self.schema_.encode(X), n_jobs=self.n_jobs)
        return self.booster_.predict(data).astype(np.float64)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """scikit-learn style ``[n, 2]``: columns P(normal), P(abnormal)."""
        p = self.p_abnormal(X)
        return np.stack([1.0 - p, p], axis=1)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """1 (abnormal) where P(abnormal) >= 0.5, else 0."""
        return (self.p_abnormal(X) >= 0.5).astype(np.int64)

    def set_thresholds(self, low: float, high: float, source: str) -> "GateClassifier":
        """The gate thresholds saved with the model (low/high thresholds: see cxrdet/gate/rules.py); ``source`` says why."""
        if not (np.isfinite(low) and np.isfinite(high) and 0.0 <= low < high):
            # high > 1 is allowed: it means "never boxes only" (always hedge with class 14)
            raise UserError(f"gate thresholds need 0 <= low < high, got low={low}, high={high}")
        self.low_, self.high_, self.threshold_source_ = float(low), float(high), str(source)
        return self

    def set_rescore(self, choice: str, reason: str) -> "GateClassifier":
        """What ``--rescore auto`` does with this gate: ``classifier`` or ``none``; ``reason`` says why."""
        if choice not in RESCORE_CHOICES:
            raise UserError(f"rescore choice must be one of {RESCORE_CHOICES}, got {choice!r}")
        self.rescore_, self.rescore_reason_ = str(choice), str(reason)
        return self

    def feature_importances(self, importance_type: str = "total_gain") -> pd.Series:
        """Importance per feature (share of the total, zeros for unused), largest first."""
        score = self.booster_.get_score(importance_type=importance_type)
        s = pd.Series({n: float(score.get(n, 0.0)) for n in self.feature_names_})
        total = s.sum()
        return (s / total if total > 0 else s).sort_values(ascending=False)

    # ------------------------------------------------------------- persistence
    def save(self, out_dir: str | Path, summary: dict | None = None) -> Path:
        """Write ``gate.ubj`` + ``gate_schema.json`` into ``out_dir``; returns the folder."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(out / MODEL_FILE) as tmp:  # XGBoost picks UBJSON from the .ubj suffix
            self.booster_.save_model(str(tmp))
        training = {
            "n_images": self.n_train_,
            "n_abnormal": self.n_abnormal_,
            "cv_auc": self.cv_auc_,  # NaN (an undefined AUC) is written as null
            "fold_auc": list(self.fold_auc_),
            "best_iterations": self.best_iterations_,
            "n_rounds": self.n_rounds_,
            **(summary or {}),
        }
        doc = {
            "format": SCHEMA_FORMAT,
            "format_version": SCHEMA_VERSION,
            "model_file": MODEL_FILE,
            "features": self.schema_.to_json(),
            "thresholds": {"low": self.low_, "high": self.high_, "source": self.threshold_source_},
            "rescore": {"choice": getattr(self, "rescore_", "none"),
                        "reason": getattr(self, "rescore_reason_", "not measured (no classifier evidence)")},
            "params": self.get_params(),
            "training": training,
            "versions": library_versions(),
        }
        atomic.write_json(out / SCHEMA_FILE, doc)
        return out

    @classmethod
    def load(cls, model_dir: str | Path) -> "GateClassifier":
        """A fitted gate from ``gate.ubj`` + ``gate_schema.json`` (checked, never unpickled)."""
        doc, model_path = _read_schema(Path(model_dir))
        params = {k: v for k, v in doc.get("params", {}).items() if k in cls().get_params()}
        gate = cls(**{**params, "n_jobs": None})  # threads belong to this machine, not the trainer's
        booster = xgb.Booster()
        try:
            booster.load_model(str(model_path))
        except xgb.core.XGBoostError as e:
            raise UserError(f"{model_path} is not a readable XGBoost model ({e}). Fix: retrain the gate.") from e
        gate.schema_ = FeatureSchema.from_json(doc["features"])
        if booster.feature_names is not None and list(booster.feature_names) != gate.schema_.names:
            raise UserError(
                f"{model_path} and {SCHEMA_FILE} disagree on the features (booster has "
                f"{len(booster.feature_names)}, schema {len(gate.schema_.names)}); the folder mixes "
                "files of two trainings. Fix: retrain the gate into an empty folder."
            )
        training = doc.get("training", {})
        gate.booster_ = booster
        gate.feature_names_ = list(gate.schema_.names)
        gate.categories_ = {k: list(v) for k, v in gate.schema_.categories.items()}
        gate.classes_ = np.array([0, 1])
        gate.n_rounds_ = training.get("n_rounds")
        gate.cv_auc_ = training.get("cv_auc")
        gate.fold_auc_ = training.get("fold_auc")
        gate.best_iterations_ = training.get("best_iterations")
        gate.n_train_ = training.get("n_images")
        gate.n_abnormal_ = training.get("n_abnormal")
        gate.training_ = training
        gate.source_ = str(Path(model_dir))
        t = doc["thresholds"]
        try:
            gate.set_thresholds(t["low"], t["high"], t.get("source", "saved"))
        except UserError as e:
            raise UserError(f"{model_dir / SCHEMA_FILE}: {e}. Fix: retrain the gate.") from None
        r = doc.get("rescore", {"choice": "none", "reason": "saved before rescoring was measured"})
        return gate.set_rescore(r["choice"], r.get("reason", ""))


def library_versions() -> dict[str, str]:
    from cxrdet import __version__

    return {
        "cxrdet": __version__,
        "xgboost": xgb.__version__,
        "pandas": pd.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _read_schema(model_dir: Path) -> tuple[dict, Path]:
    schema_path, model_path = model_dir / SCHEMA_FILE, model_dir / MODEL_FILE
    for p in (schema_path, model_path):
        if not p.is_file():
            raise UserError(
                f"gate folder {model_dir} lacks {p.name} (expected {MODEL_FILE} + {SCHEMA_FILE}). "
                "Fix: point to the output folder of `cxrdet train-gate`."
            )
    try:
        doc = json.loads(schema_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, deep nesting
        raise UserError(f"{schema_path} is not valid JSON ({e}). Fix: retrain the gate.") from e
    if not isinstance(doc, dict) or doc.get("format") != SCHEMA_FORMAT:
        raise UserError(f"{schema_path} is not a cxrdet gate schema (format {SCHEMA_FORMAT!r} expected)")
    if doc.get("format_version") != SCHEMA_VERSION:
        raise UserError(
            f"{schema_path} has schema version {doc.get('format_version')}, this cxrdet reads "
            f"version {SCHEMA_VERSION}. Fix: retrain the gate with this cxrdet."
        )
    for key in ("features", "thresholds"):
        if key not in doc:
            raise UserError(f"{schema_path} lacks the {key!r} entry. Fix: retrain the gate.")
    problem = _schema_problem(doc)
    if problem:
        raise UserError(f"{schema_path}: {problem}. Fix: retrain the gate (the file was edited or damaged).")
    return doc, model_path


def _schema_problem(doc: dict) -> str:
    """What is wrong with the entries ``load`` uses ('' when nothing)."""
    features = doc["features"]
    if not isinstance(features, list) or not all(isinstance(f, dict) for f in features):
        return "'features' must be a list of {name, kind[, categories]} objects"
    names = [f.get("name") for f in features]
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        return "feature names must be distinct strings"
    for f in features:
        if f.get("kind") not in ("float", "category"):
            return f"feature {f['name']!r} has kind {f.get('kind')!r}; expected 'float' or 'category'"
        cats = f.get("categories")
        if f["kind"] == "category" and not (isinstance(cats, list) and all(isinstance(c, str) for c in cats)):
            return f"category feature {f['name']!r} needs 'categories', a list of strings"
    t = doc["thresholds"]
    numbers = isinstance(t, dict) and all(
        isinstance(t.get(k), (int, float)) and not isinstance(t.get(k), bool) for k in ("low", "high"))
    if not numbers:
        return "'thresholds' must hold the numbers 'low' and 'high'"
    for key in ("params", "training"):
        if not isinstance(doc.get(key, {}), dict):
            return f"{key!r} must be an object"
    r = doc.get("rescore", {"choice": "none"})
    if not (isinstance(r, dict) and r.get("choice") in RESCORE_CHOICES):
        return f"'rescore' must be an object whose 'choice' is one of {list(RESCORE_CHOICES)}, got {r!r}"[:300]
    return ""


def _check_xy(X, y) -> tuple[pd.DataFrame, np.ndarray]:
    if not isinstance(X, pd.DataFrame):
        raise TypeError("GateClassifier.fit needs a pandas DataFrame (feature names are the schema)")
    y = np.asarray(y).reshape(-1)
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels")
    if not np.isin(y, [0, 1]).all():
        raise ValueError("y must be 0 (normal) / 1 (abnormal)")
    return X, y.astype(np.int64)


def _dmatrix(X: pd.DataFrame, y: np.ndarray | None = None, n_jobs: int | None = None) -> xgb.DMatrix:
    return xgb.DMatrix(X, label=y, enable_categorical=True, missing=np.nan, nthread=n_jobs)

