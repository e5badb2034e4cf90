"""benchmarks/bench_quality.py --resume: a stage whose output exists is kept, the others run."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from test_split import synthetic_labels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_quality as bq  # noqa: E402


def split_argv(tmp_path: Path) -> list[str]:
    labels = tmp_path / "train.csv"
    synthetic_labels().to_csv(labels, index=False)
    return ["--labels", str(labels), "--n-folds", "4", "--seed", "0", "--out", str(tmp_path / "folds.csv")]


def test_resume_keeps_a_finished_stage(tmp_path):
    argv = split_argv(tmp_path)
    (tmp_path / "folds.csv").write_text("kept\n")
    run = bq.StageRunner(tmp_path, resume=True)
    run.unless(tmp_path / "folds.csv", "split", "split", argv)
    assert (tmp_path / "folds.csv").read_text() == "kept\n" and run.timings == {}
    assert run.resume_flags == ["--resume", "auto"]  # trainings cut short continue from last.ckpt


def test_resume_runs_a_missing_stage_and_a_fresh_run_reruns_everything(tmp_path):
    argv = split_argv(tmp_path)
    run = bq.StageRunner(tmp_path, resume=True)
    run.unless(tmp_path / "folds.csv", "split", "split", argv)
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert len(folds) == 120 and sorted(folds["fold"].unique()) == [0, 1, 2, 3] and "split" in run.timings
    (tmp_path / "folds.csv").write_text("stale\n")
    fresh = bq.StageRunner(tmp_path)  # without --resume an existing output is no reason to skip
    fresh.unless(tmp_path / "folds.csv", "split", "split", argv)
    assert len(pd.read_csv(tmp_path / "folds.csv")) == 120 and fresh.resume_flags == []
