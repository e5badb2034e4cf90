"""Detector training end to end on tiny synthetic data (CPU): smoke fit+validate through the CLI,
learning (overfit), resume, input errors, and DDP validation equal to single-process validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from cxrdet.cli import main as cli
from cxrdet.detector.data import DetectorDataModule, TrainingTable, load_table
from cxrdet.detector.export import load_detector
from cxrdet.detector.module import DetectorModule

from detector_fixtures import cli_args, limit_threads, make_dataset, tiny_config

limit_threads()
REPO = Path(__file__).resolve().parents[1]
LOSSES = ["train/loss", "train/loss_classifier", "train/loss_box_reg", "train/loss_objectness", "train/loss_rpn_box_reg"]


def quiet_trainer(**kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False, **kw)


def metrics_frame(run: Path) -> pd.DataFrame:
    files = sorted(run.glob("logs/version_*/metrics.csv"))
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("det") / "data", n_abnormal=6, n_normal=2, readers=2)


@pytest.fixture(scope="module")
def smoke_run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("smoke") / "run"
    assert cli(cli_args(data, run, "--epochs", "1", "--devices", "1")) == 0
    return run


@pytest.mark.slow
def test_smoke_fit_validate_writes_the_run_folder(smoke_run):
    for rel in ("config.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "export/model.pt", "export/config.json"):
        assert (smoke_run / rel).is_file(), rel
    assert list(smoke_run.glob("tb/version_0/events.out.tfevents.*"))
    m = metrics_frame(smoke_run)
    for key in LOSSES:
        assert np.isfinite(m[key].dropna()).all() and len(m[key].dropna()) >= 1, key
    val = m["val_map"].dropna()
    assert len(val) == 1 and 0.0 <= val.iloc[0] <= 1.0
    assert m["val_images"].dropna().iloc[0] == 4  # fold 0 of 8 images, every one scored
    cfg = json.loads((smoke_run / "config.json").read_text())
    ckpt = torch.load(smoke_run / "checkpoints/best.ckpt", weights_only=True)  # no pickled objects
    assert ckpt["hyper_parameters"]["config"] == cfg
    assert cfg["cache_size"] == 96 and cfg["cache_voi"] == "auto" and cfg["fusion"] == "wbf"
    model, loaded = load_detector(smoke_run / "export")
    assert loaded.model == "fasterrcnn_resnet18_fpn" and not model.training


@pytest.mark.slow
def test_resume_restores_global_step_and_optimizer_state(smoke_run, data):
    before = torch.load(smoke_run / "checkpoints/last.ckpt", weights_only=True)
    assert before["global_step"] == 2  # 3 positives + 1 normal (fraction 0.25), batch 2
    assert cli(["train", "--out", str(smoke_run), "--resume", "--epochs", "2"]) == 0
    after = torch.load(smoke_run / "checkpoints/last.ckpt", weights_only=True)
    assert after["global_step"] == 4
    # AdamW counts its own steps per parameter: 4 only if the saved state was restored.
    steps = {float(s["step"]) for s in after["optimizer_states"][0]["state"].values()}
    assert steps == {4.0}
    assert after["lr_schedulers"][0]["last_epoch"] == 4
    assert len(metrics_frame(smoke_run)["val_map"].dropna()) == 2  # one validation per epoch


@pytest.mark.slow
def test_learning_overfits_the_train_set(data):
    torch.manual_seed(0)
    cfg = tiny_config(data, data["cache"].parent, batch_size=3, val_batch_size=4, normal_fraction=-1.0,
                      hflip_prob=0.0, crop_prob=0.0, color_prob=0.0, warmup_steps=5)
    t0, t1 = load_table(cfg), load_table(tiny_config(data, data["cache"].parent, fold=1))
    everything = t0.train_ids + t0.val_ids
    table = TrainingTable(t0.targets, t0.orig_hw, everything, everything,
                          pd.concat([t0.val_gt, t1.val_gt], ignore_index=True), t0.cache_size, t0.cache_voi)
    module = DetectorModule(cfg.to_dict())
    datamodule = DetectorDataModule(cfg, table)
    trainer = quiet_trainer(max_steps=45, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 45
    (res,) = quiet_trainer().validate(module, datamodule=datamodule, verbose=False)
    assert res["val_images"] == 8
    assert res["val_map"] >= 0.5, res


@pytest.mark.slow
def test_bad_inputs_exit_2_with_a_clear_message(data, tmp_path, capsys):
    def run(**change) -> str:
        paths = {**data, **change}
        assert cli(cli_args(paths, tmp_path / "run", "--max-steps", "1")) == 2
        return capsys.readouterr().err

    err = run(cache=tmp_path / "nope.h5")
    assert "nope.h5" in err and "does not exist" in err
    assert "missing.csv" in run(labels=tmp_path / "missing.csv")
    labels = pd.read_csv(data["labels"], dtype=str, keep_default_na=False)
    extra = labels.iloc[[0]].assign(image_id="ghost01")
    pd.concat([labels, extra]).to_csv(tmp_path / "more.csv", index=False)
    err = run(labels=tmp_path / "more.csv")
    assert "ghost01" in err and "not in cache" in err and "more.csv" in err
    folds = pd.read_csv(data["folds"], dtype=str).iloc[:-1]
    folds.to_csv(tmp_path / "short_folds.csv", index=False)
    err = run(folds=tmp_path / "short_folds.csv")
    assert "no fold" in err and "img007" in err
    pd.read_csv(data["folds"], dtype=str).assign(fold=0).to_csv(tmp_path / "one_fold.csv", index=False)
    assert "0 training" in run(folds=tmp_path / "one_fold.csv")
    torch.save({"head.weight": torch.zeros(2)}, tmp_path / "w.pth")
    assert cli(cli_args(data, tmp_path / "run2", "--max-steps", "1", "--weights", str(tmp_path / "w.pth"))) == 2
    assert "does not fit" in capsys.readouterr().err
    assert cli(["train", "--out", str(tmp_path / "never"), "--resume"]) == 2
    assert "config.json" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_validation_map_equals_single_process(tmp_path):
    # 7 images; fold 1 holds 3 (odd), so DistributedSampler pads one duplicate on 2 ranks.
    data = make_dataset(tmp_path / "data", n_abnormal=5, n_normal=2, seed=1)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = cli_args(data, run, "--fold", "1", "--epochs", "2", "--batch-size", "1", "--val-batch-size", "1",
                    "--devices", "2", "--strategy", "ddp", "--normal-fraction", "-1")
    proc = subprocess.run([sys.executable, "-m", "cxrdet", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = metrics_frame(run)
    ddp_map = m["val_map"].dropna()
    assert len(ddp_map) == 2 and (m["val_images"].dropna() == 3).all()
    last = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 4  # 4 train images / (2 ranks x batch 1) = 2 steps per epoch

    cfg = tiny_config(data, run, fold=1, val_batch_size=1)
    module = DetectorModule.load_from_checkpoint(run / "checkpoints/last.ckpt", weights_only=True, load_weights=False)
    (res,) = quiet_trainer().validate(module, datamodule=DetectorDataModule(cfg), verbose=False)
    assert res["val_images"] == 3
    assert res["val_map"] == pytest.approx(float(ddp_map.iloc[-1]), abs=1e-6)
