"""Experiment loggers for any cxrdet Lightning trainer: ``--logger tensorboard|csv|mlflow``.

Everything stays in the run folder and nothing touches the network:

* ``csv``: ``RUN/logs/version_N/metrics.csv`` (Lightning's CSVLogger)
* ``tensorboard``: ``RUN/tb/version_N/`` (``tensorboard --logdir RUN/tb``)
* ``mlflow``: a local MLflow store, ``sqlite:///RUN/mlflow.db`` with artifacts in
  ``RUN/mlartifacts`` (``mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db``). MLflow 3
  deprecates the plain-folder file store and defaults to SQLite itself, so SQLite it is.
  MLflow 3's usage telemetry (HTTP requests to mlflow.org) is switched off with
  ``MLFLOW_DISABLE_TELEMETRY=true`` unless the environment already sets that variable.

Several loggers may be chosen (repeat the flag or give a comma list); the default keeps
TensorBoard + CSV. Library functions raise ``ValueError`` naming the value; commands turn that
into a flag message.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from pathlib import Path

from cxrdet.errors import UserError

LOGGERS = ("tensorboard", "csv", "mlflow")
DEFAULT_LOGGERS = ["csv", "tensorboard"]  # what every run wrote before loggers were a choice
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"


def parse_loggers(values: Iterable[str] | None) -> list[str]:
    """``["csv,mlflow", "tensorboard"]`` -> ``["csv", "mlflow", "tensorboard"]`` (order kept, no repeats)."""
    if values is None:
        return list(DEFAULT_LOGGERS)
    names: list[str] = []
    for value in values:
        for name in str(value).split(","):
            name = name.strip().lower()
            if name not in LOGGERS:
                raise ValueError(f"logger {name!r} is not one of {list(LOGGERS)}")
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError(f"no logger given; expected some of {list(LOGGERS)}")
    return names


def add_logger_flag(p: argparse.ArgumentParser) -> None:
    """``--logger``, the same for every training command (parse the values with :func:`parse_loggers`)."""
    p.add_argument("--logger", dest="loggers", action="append", default=None, metavar="{" + ",".join(LOGGERS) + "}",
                   help="experiment logger(s); repeat or comma-separate, e.g. --logger csv,mlflow. mlflow logs to "
                        f"the local store sqlite:///RUN_DIR/{MLFLOW_DB} (no server; `mlflow ui --backend-store-uri` "
                        f"it). Default: {','.join(DEFAULT_LOGGERS)}")


def loggers_from_flag(values: Iterable[str] | None) -> list[str]:
    """:func:`parse_loggers` for a command's ``--logger`` values: a UserError naming the flag."""
    try:
        return parse_loggers(values)
    except ValueError as e:
        raise UserError(f"--logger: {e}") from None


def mlflow_tracking_uri(run_dir: str | Path) -> str:
    """The run folder's local MLflow store (SQLite file; an absolute path, so any cwd finds it)."""
    return f"sqlite:///{(Path(run_dir) / MLFLOW_DB).resolve()}"


def build_loggers(names: Iterable[str] | None, run_dir: str | Path, experiment: str, run_name: str | None = None) -> list:
    """Lightning loggers for ``names`` (see :func:`parse_loggers`), all writing under ``run_dir``."""
    from pytorch_lightning.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

    run_dir = Path(run_dir)
    out = []
    for name in parse_loggers(None if names is None else list(names)):
        if name == "csv":
            out.append(CSVLogger(run_dir, name="logs"))
        elif name == "tensorboard":
            out.append(TensorBoardLogger(run_dir, name="tb"))
        else:
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # a local store makes no network calls
            out.append(MLFlowLogger(
                experiment_name=experiment, run_name=run_name or run_dir.resolve().name,
                tracking_uri=mlflow_tracking_uri(run_dir),
                artifact_location=(run_dir / MLFLOW_ARTIFACTS).resolve().as_uri(),
                log_model=False,  # checkpoints already live in RUN/checkpoints; no second copy
            ))
    return out
