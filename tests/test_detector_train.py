"""Detector training end to end on tiny synthetic data (CPU): smoke fit+validate through the CLI,
learning (overfit), resume (also `--resume auto`), input errors, a checkpoint that outlives its
--weights file, a bf16 CPU run, the entry script's --help, and DDP validation equal to
single-process validation."""

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
from cxrdet.detector import train
from cxrdet.detector.data import DetectorDataModule, TrainingTable, load_table
from cxrdet.detector.export import load_detector
from cxrdet.detector.model import build_detector
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


SMOKE = ("--epochs", "1", "--devices", "1", "--resume", "auto")  # auto: an empty folder starts fresh


@pytest.fixture(scope="module")
def smoke_run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("smoke") / "run"
    assert cli(cli_args(data, run, *SMOKE)) == 0
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
def test_resume_restores_global_step_and_optimizer_state(smoke_run, data, capsys):
    before = torch.load(smoke_run / "checkpoints/last.ckpt", weights_only=True)
    assert before["global_step"] == 2  # `--resume auto` started fresh: 3 positives + 1 normal, batch 2
    assert cli(["train", "--out", str(smoke_run), "--resume", "--epochs", "2"]) == 0
    after = torch.load(smoke_run / "checkpoints/last.ckpt", weights_only=True)
    assert after["global_step"] == 4
    # AdamW counts its own steps per parameter: 4 only if the saved state was restored.
    steps = {float(s["step"]) for s in after["optimizer_states"][0]["state"].values()}
    assert steps == {4.0}
    assert after["lr_schedulers"][0]["last_epoch"] == 4
    assert len(metrics_frame(smoke_run)["val_map"].dropna()) == 2  # one validation per epoch

    # A SLURM requeue reruns the first command unchanged (here one epoch longer): it continues.
    assert cli(cli_args(data, smoke_run, *SMOKE, "--epochs", "3")) == 0
    assert torch.load(smoke_run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 6
    assert len(metrics_frame(smoke_run)["val_map"].dropna()) == 3
    # Another validation fold would make best.ckpt compare val_map across validation sets.
    assert cli(cli_args(data, smoke_run, *SMOKE, "--fold", "1")) == 2
    err = capsys.readouterr().err
    assert "--fold" in err and "has 0" in err and "gives 1" in err


@pytest.mark.slow
def test_learning_overfits_the_train_set(data):
    pl.seed_everything(0, workers=True)  # seeds 0-2 all reach map_no14 >= 0.86; 0 reaches 1.0
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
    # Class 14 alone could carry val_map: the drawn findings must be found too.
    assert res["val_map_no14"] >= 0.5, res
    assert res["val_ap/00_Aortic_enlargement"] >= 0.3 and res["val_ap/04_Consolidation"] >= 0.3, res


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
    assert "last.ckpt does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_checkpoint_loads_after_its_weights_file_is_gone(data, tmp_path):
    weights = tmp_path / "coco_like.pth"
    torch.manual_seed(3)
    torch.save(build_detector(tiny_config(data, tmp_path)).state_dict(), weights)
    run = tmp_path / "run"
    assert cli(cli_args(data, run, "--max-steps", "1", "--weights", weights)) == 0
    weights.unlink()  # moved or deleted after training
    ckpt = run / "checkpoints/last.ckpt"
    module = DetectorModule.load_from_checkpoint(ckpt, weights_only=True)
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert torch.equal(module.state_dict()["model.rpn.head.conv.0.0.weight"], saved["model.rpn.head.conv.0.0.weight"])


@pytest.mark.slow
def test_bf16_mixed_cpu_run(data, tmp_path, monkeypatch):
    from pytorch_lightning.plugins.precision import MixedPrecision

    trainers = []
    real = train.build_trainer
    monkeypatch.setattr(train, "build_trainer", lambda *a: trainers.append(real(*a)) or trainers[-1])
    run = tmp_path / "run"
    assert cli(cli_args(data, run, "--max-steps", "1", "--precision", "bf16-mixed")) == 0
    plugin = trainers[0].precision_plugin
    assert isinstance(plugin, MixedPrecision) and plugin.precision == "bf16-mixed" and plugin.device == "cpu"
    assert np.isfinite(metrics_frame(run)["train/loss"].dropna()).all()
    assert (run / "export/model.pt").is_file()


def test_entry_script_runs_the_same_main_as_cxrdet_train(data, tmp_path):
    """train_detector.py and `cxrdet train` refuse a missing cache with the same message and exit 2."""
    missing = tmp_path / "missing.h5"
    argv = cli_args(data, tmp_path / "run", "--epochs", "1")[1:]
    argv[argv.index("--cache") + 1] = str(missing)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    results = {}
    for name, cmd in (("train_detector.py", [str(REPO / "train_detector.py")]), ("cxrdet train", ["-m", "cxrdet", "train"])):
        proc = subprocess.run([sys.executable, *cmd, *argv], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path, env=env)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        line = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"{name}: error: ")]
        assert line, proc.stderr[-2000:]
        results[name] = line[0][len(f"{name}: error: "):]
    assert results["train_detector.py"] == results["cxrdet train"]
    assert f"cache file {missing} does not exist" in results["cxrdet train"]
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.ckpt"))


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
    module = DetectorModule.load_from_checkpoint(run / "checkpoints/last.ckpt", weights_only=True)
    (res,) = quiet_trainer().validate(module, datamodule=DetectorDataModule(cfg), verbose=False)
    assert res["val_images"] == 3
    assert res["val_map"] == pytest.approx(float(ddp_map.iloc[-1]), abs=1e-6)
