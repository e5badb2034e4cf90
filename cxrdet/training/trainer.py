"""The Lightning Trainer of a run folder: best/last checkpoints by one monitored score, CSV and
TensorBoard logs, SLURM checkpoints in the run folder. Takes any config with the trainer fields
(accelerator, devices, num_nodes, strategy, precision, epochs, max_steps, grad_clip,
limit_train_batches, limit_val_batches, log_every_n_steps, out)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def lightning_devices(value: str) -> int | str:
    """``--devices`` text -> what Lightning takes: a count (int) or a spec like ``auto``/``0,1``."""
    text = str(value).strip()
    return int(text) if text.lstrip("-").isdigit() else text


def lightning_limit(value: float) -> int | float:
    """A fraction (<= 1) or a batch count (> 1)."""
    return int(value) if value > 1 else float(value)


def build_trainer(cfg: Any, ckpt_dir: Path, monitor: str, use_distributed_sampler: bool = True,
                  experiment: str = "cxrdet"):
    """The Lightning Trainer of a cxrdet run (``experiment``: its MLflow experiment name)."""
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint

    from cxrdet.training.loggers import build_loggers

    # Our epoch metrics are already global (gathered predictions, one score broadcast from rank
    # 0); Lightning's sync_dist advice would only add an all-reduce of equal values.
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="max", save_top_k=1,
                                 save_last=True, auto_insert_metric_name=False)
    out = Path(cfg.out)
    return pl.Trainer(
        accelerator=cfg.accelerator, devices=lightning_devices(cfg.devices), num_nodes=cfg.num_nodes,
        strategy=cfg.strategy, precision=cfg.precision, max_epochs=cfg.epochs, max_steps=cfg.max_steps,
        gradient_clip_val=cfg.grad_clip or None, gradient_clip_algorithm="norm",
        default_root_dir=out,  # SLURM hpc_ckpt_N.ckpt lands in the run folder
        use_distributed_sampler=use_distributed_sampler, callbacks=[checkpoint],
        # cfg.loggers when the config has them (None = csv + tensorboard, as before)
        logger=build_loggers(getattr(cfg, "loggers", None), out, experiment=experiment),
        limit_train_batches=lightning_limit(cfg.limit_train_batches),
        limit_val_batches=lightning_limit(cfg.limit_val_batches),
        log_every_n_steps=cfg.log_every_n_steps, num_sanity_val_steps=1, enable_progress_bar=True,
    )
