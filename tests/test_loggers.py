"""--logger tensorboard|csv|mlflow: parsing, and a tiny training run read back from the local MLflow store."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cxrdet.cli import main as cli
from cxrdet.training.loggers import DEFAULT_LOGGERS, mlflow_tracking_uri, parse_loggers
from detector_fixtures import cli_args, limit_threads, make_dataset

limit_threads()


def test_parse_loggers_repeats_and_comma_lists():
    assert parse_loggers(None) == DEFAULT_LOGGERS == ["csv", "tensorboard"]
    assert parse_loggers(["mlflow,csv", "CSV", " tensorboard "]) == ["mlflow", "csv", "tensorboard"]
    with pytest.raises(ValueError, match="'wandb' is not one of"):
        parse_loggers(["csv,wandb"])
    with pytest.raises(ValueError, match="no logger given"):
        parse_loggers([])


def test_bad_logger_flag_exits_2_naming_it(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n_abnormal=2, n_normal=2)
    assert cli(cli_args(data, tmp_path / "run", "--logger", "mlflow,neptune")) == 2
    assert "--logger: logger 'neptune' is not one of" in capsys.readouterr().err


@pytest.mark.slow
def test_training_with_mlflow_logs_val_map_to_the_local_store(tmp_path):
    from mlflow.tracking import MlflowClient

    data = make_dataset(tmp_path / "data", n_abnormal=4, n_normal=2)
    run = tmp_path / "run"
    assert cli(cli_args(data, run, "--epochs", "1", "--logger", "mlflow", "--logger", "csv")) == 0
    assert not (run / "tb").exists()  # only the loggers asked for
    assert json.loads((run / "config.json").read_text())["loggers"] == ["mlflow", "csv"]
    client = MlflowClient(tracking_uri=mlflow_tracking_uri(run))
    experiment = client.get_experiment_by_name("cxrdet-detector")
    assert experiment is not None and experiment.artifact_location.startswith((run / "mlartifacts").as_uri())
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    history = client.get_metric_history(found.info.run_id, "val_map")
    csv = pd.concat(pd.read_csv(f) for f in run.glob("logs/version_*/metrics.csv"))["val_map"].dropna()
    assert len(history) == len(csv) == 1
    assert history[0].value == pytest.approx(float(csv.iloc[0]), abs=1e-6)  # the same number in both stores
    assert "fusion" in found.data.params or any(k.endswith("fusion") for k in found.data.params)


def test_classifier_logs_to_mlflow_and_refuses_a_bad_logger(tmp_path, capsys):
    """train-classifier takes the same --logger as train: MLflow gets the same val_score as the CSV."""
    from mlflow.tracking import MlflowClient

    from classifier_fixtures import make_vinbig, train_args

    data = make_vinbig(tmp_path / "data", n=24)
    assert cli(train_args(data, tmp_path / "bad", "--logger", "csv,wandb")) == 2
    assert "--logger: logger 'wandb' is not one of" in capsys.readouterr().err
    run = tmp_path / "run"
    assert cli(train_args(data, run, "--epochs", "1", "--logger", "mlflow,csv")) == 0
    assert not (run / "tb").exists()
    assert json.loads((run / "config.json").read_text())["loggers"] == ["mlflow", "csv"]
    client = MlflowClient(tracking_uri=mlflow_tracking_uri(run))
    experiment = client.get_experiment_by_name("cxrdet-classifier")
    (found,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(found.info.run_id, "val_score")
    csv = pd.concat(pd.read_csv(f) for f in run.glob("logs/version_*/metrics.csv"))["val_score"].dropna()
    assert len(history) == len(csv) == 1
    assert history[0].value == pytest.approx(float(csv.iloc[0]), abs=1e-6)
