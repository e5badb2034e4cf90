"""``cxrdet train`` (== ``python train_detector.py``): Lightning training on 1 CPU to many GPU nodes.

Run folder (``--out RUN_DIR``)::

    config.json                 the full resolved DetectorConfig
    checkpoints/best.ckpt       best validation mAP@0.4
    checkpoints/last.ckpt       end of the latest epoch (what --resume continues from)
    hpc_ckpt_N.ckpt             Lightning's SLURM checkpoint before a requeue (also resumable)
    logs/version_N/metrics.csv  CSVLogger         (--logger csv, default)
    tb/version_N/               TensorBoard       (--logger tensorboard, default)
    mlflow.db + mlartifacts/    local MLflow store (--logger mlflow; see cxrdet.training.loggers)
    export/model.pt + config.json   inference artifact from best.ckpt (see detector.export)

Every flag defaults to the DetectorConfig value; with ``--resume`` the run's config.json is the
base and only flags given explicitly change it (architecture and validation flags may not change;
see detector.resume). ``--resume auto`` starts fresh in an empty run folder: SLURM requeues rerun
the same command.
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path

from cxrdet.detector.config import FUSIONS, MODELS, OPTIMIZERS, DetectorConfig
from cxrdet.detector.resume import (
    ARCHITECTURE_FIELDS,
    CKPT_DIR,
    LAST,
    PATH_FIELDS,
    RESUME_ALWAYS,
    RESUME_AUTO,
    changed_field,
)
from cxrdet.errors import UserError
from cxrdet.flags import RenamedFlag, add_training_device_flag, apply_device_shorthand
from cxrdet.training.loggers import add_logger_flag, build_loggers, loggers_from_flag
from cxrdet.training.resume import checkpoint_to_resume, locked_field_error

CONFIG_FILE = "config.json"
EXPORT_DIR = "export"
MONITOR = "val_map"
MLFLOW_EXPERIMENT = "cxrdet-detector"  # one experiment for all detector runs; each run is named by its folder

# flag -> (type, help); dest = config field (dashes -> underscores).
FLAGS: dict[str, tuple[type, str]] = {
    "--cache": (str, "HDF5 cache from `cxrdet prepare`"),
    "--labels": (str, "label CSV (VinBigData train.csv format, original pixels)"),
    "--folds": (str, "FOLDS.csv (image_id,fold) from `cxrdet split`"),
    "--fold": (int, "validation fold; the other folds train"),
    "--arch": (str, "detector architecture (resnet18 is the light CPU/demo option)"),
    "--weights": (str, "local full-detector state dict, e.g. models-weight/<coco>.pth (head replaced if shapes differ)"),
    "--backbone-weights": (str, "local ImageNet ResNet state dict (torchvision resnet keys)"),
    "--trainable-layers": (int, "backbone stages that train with pretrained weights (0-5)"),
    "--fusion": (str, "reader fusion of the training boxes"),
    "--fusion-iou": (float, "IoU threshold of the fusion"),
    "--min-size": (int, "model input short side (px)"),
    "--max-size": (int, "model input long-side cap (px)"),
    "--anchor-sizes": (int, "5 anchor sizes, one per FPN level"),
    "--normal-fraction": (float, "share of 'No finding' images per epoch (<0: every image once)"),
    "--hflip-prob": (float, "probability of a horizontal flip per training image"),
    "--crop-prob": (float, "probability of a random crop (scale jitter) per training image"),
    "--color-prob": (float, "probability of brightness/contrast/gamma jitter per training image"),
    "--box-batch-size-per-image": (int, "RoIs sampled per image for the box head"),
    "--rpn-pre-nms-top-n-train": (int, "RPN proposals per FPN level before NMS, training"),
    "--rpn-post-nms-top-n-train": (int, "RPN proposals per image after NMS, training"),
    "--rpn-pre-nms-top-n-test": (int, "RPN proposals per FPN level before NMS, inference"),
    "--rpn-post-nms-top-n-test": (int, "RPN proposals per image the box head scores, inference"),
    "--rpn-batch-size-per-image": (int, "anchors sampled per image for the RPN loss"),
    "--score-thresh": (float, "minimum detection score kept"),
    "--detections-per-img": (int, "detections kept per image"),
    "--optimizer": (str, "optimizer"),
    "--lr": (float, "peak learning rate for the TOTAL batch (SGD rule: 0.00125 x total images per step)"),
    "--weight-decay": (float, "weight decay"),
    "--warmup-steps": (int, "linear warmup steps before cosine decay"),
    "--grad-clip": (float, "clip the gradient norm (0 = off)"),
    "--batch-size": (int, "images per device per step"),
    "--val-batch-size": (int, "images per device per validation step"),
    "--workers": (int, "DataLoader workers per device"),
    "--epochs": (int, "epochs"),
    "--max-steps": (int, "train exactly this many optimizer steps, whatever --epochs says (-1 = by epochs)"),
    "--accelerator": (str, "cpu, gpu, auto, ... (or the --device shorthand)"),
    "--devices": (str, "devices per node: auto, a count (2), or GPU indices (0,1; one index as 1,)"),
    "--num-nodes": (int, "nodes (torchrun / SLURM)"),
    "--strategy": (str, "auto, ddp, ddp_find_unused_parameters_true, ..."),
    "--precision": (str, "32-true, 16-mixed, bf16-mixed"),
    "--seed": (int, "seed of sampling, augmentation and initialisation"),
    "--limit-train-batches": (float, "fraction (<=1) or number (>1) of training batches per epoch"),
    "--limit-val-batches": (float, "fraction or number of validation batches (the metric wants 1.0)"),
    "--log-every-n-steps": (int, "logging cadence"),
}


CHOICES = {"--arch": MODELS, "--fusion": FUSIONS, "--optimizer": OPTIMIZERS}
# flag -> config field, where they differ: `--model` is an artifact folder to load in every command,
# so the architecture is `--arch`; config.json keeps its `model` key, so old run folders still load.
DESTS = {"--arch": "model"}
PATH_FLAGS = {"--cache", "--labels", "--folds", "--weights", "--backbone-weights"}


def _metavar(flag: str, typ: type) -> str:
    if flag in CHOICES:
        return "{" + ",".join(CHOICES[flag]) + "}"
    if flag in PATH_FLAGS:
        return "PATH"
    return {int: "N", float: "X"}.get(typ, "VALUE")


def _old_model_hint(value: str) -> str:
    if value in MODELS:
        return f"the architecture is now --arch {value} (--model is always an artifact folder to load)"
    return (f"train loads no artifact (--model is an artifact folder to load elsewhere): the architecture "
            f"is --arch ({', '.join(MODELS)}); to start from a run's weights pass --weights FILE")


def get_args_parser() -> argparse.ArgumentParser:
    defaults = DetectorConfig()
    p = argparse.ArgumentParser(
        description="Train the Faster R-CNN detector (PyTorch Lightning; 1 CPU, 1 GPU, DDP, multi-node).",
        epilog="See docs/training.md for 1 GPU, 8 GPUs, torchrun and SLURM recipes.",
    )
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (checkpoints, logs, config.json, export/)")
    for flag, (typ, text) in FLAGS.items():
        dest = DESTS.get(flag, flag[2:].replace("-", "_"))
        default = getattr(defaults, dest)
        nargs = "+" if isinstance(default, list) else None
        p.add_argument(flag, type=typ, nargs=nargs, default=None, choices=CHOICES.get(flag), dest=dest,
                       metavar=_metavar(flag, typ), help=f"{text} (default: {default!r})")
    add_logger_flag(p)
    add_training_device_flag(p)
    p.add_argument("--model", action=RenamedFlag, hint=_old_model_hint)
    p.add_argument("--sync-batchnorm", action="store_true", default=None,
                   help="SyncBatchNorm across CUDA devices (on by itself for the v2 model; off on CPU)")
    p.add_argument("--resume", nargs="?", const=RESUME_ALWAYS, default=None, choices=(RESUME_AUTO, RESUME_ALWAYS),
                   metavar=RESUME_AUTO,
                   help="continue RUN_DIR from checkpoints/last.ckpt (same global step and optimizer state); "
                        "'--resume auto' continues if RUN_DIR holds a run and starts fresh otherwise "
                        "(for SLURM requeue scripts)")
    return p


def resolve_config(args: argparse.Namespace) -> tuple[DetectorConfig, Path | None]:
    """Defaults <- RUN_DIR/config.json (when resuming) <- flags given explicitly; and the checkpoint to resume."""
    out = Path(args.out)
    apply_device_shorthand(args)
    ckpt = resume_from(out, args.resume)
    base = DetectorConfig.load(out / CONFIG_FILE) if ckpt else DetectorConfig()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(DetectorConfig)
             if getattr(args, f.name, None) is not None and f.name != "out"}
    if ckpt:
        check_unchanged(base, given, out / CONFIG_FILE, ckpt)
    cfg = dataclasses.replace(base, **given, out=str(out))
    cfg.loggers = loggers_from_flag(cfg.loggers)
    for name in ("cache", "labels", "folds"):
        if not getattr(cfg, name):
            raise UserError(f"--{name} is required (or --resume a run whose config.json names it)")
    cfg.check("command line")
    return cfg, ckpt


def resume_from(out: Path, mode: str | None) -> Path | None:
    """The checkpoint to continue from under ``--resume [auto]`` (None = start fresh), or a UserError."""
    return checkpoint_to_resume(out, mode)


def flag_of(field: str) -> str:
    """The command-line flag of a DetectorConfig field (``model`` -> ``--arch``)."""
    return next((f for f, dest in DESTS.items() if dest == field), "--" + field.replace("_", "-"))


def check_unchanged(base: DetectorConfig, given: dict, source: Path, last: Path) -> None:
    """Refuse flags that would change the architecture or the validation of the run being resumed."""
    name = changed_field(base, given)
    if name is None:
        return
    raise locked_field_error(base, given, name, flag_of(name), source, last,
                             architecture=name in ARCHITECTURE_FIELDS, is_path=name in PATH_FIELDS)


def sync_batchnorm_decision(cfg: DetectorConfig, on_cuda: bool, world_size: int) -> tuple[bool, str]:
    """Whether to train with SyncBatchNorm, and the run-log line that says why (empty: nothing to say)."""
    if not (cfg.sync_batchnorm or cfg.model.endswith("_v2")):
        return False, ""
    if not on_cuda:
        # torch's SyncBatchNorm raises on CPU tensors in training; plain BN keeps CPU DDP runs alive.
        return False, ("SyncBatchNorm off: torch syncs BatchNorm on CUDA devices only; "
                       "each CPU process normalises its own batch")
    if world_size < 2:
        return False, "SyncBatchNorm off: a single process has nothing to sync"
    return True, f"SyncBatchNorm on: BatchNorm statistics are synced across {world_size} CUDA processes"


def apply_sync_batchnorm(trainer, module, cfg: DetectorConfig) -> None:
    """Convert BatchNorm to SyncBatchNorm in place when the resolved trainer calls for it."""
    import torch
    from pytorch_lightning.accelerators import CUDAAccelerator
    from pytorch_lightning.utilities import rank_zero_info

    on, message = sync_batchnorm_decision(cfg, isinstance(trainer.accelerator, CUDAAccelerator), trainer.world_size)
    if message:
        rank_zero_info(message)
    if on:  # what Trainer(sync_batchnorm=True) does, decided after the accelerator is resolved
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)


def _devices(value: str):
    """Config text -> Lightning ``devices``: "2" a count, "0,1" / "1," GPU indices, else as is."""
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if "," in text:
        parts = [t.strip() for t in text.split(",") if t.strip()]
        if parts and all(t.isdigit() for t in parts):
            return [int(t) for t in parts]
    return text


def _limit(value: float):
    return int(value) if value > 1 else float(value)


def build_trainer(cfg: DetectorConfig, ckpt_dir: Path):
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint

    # Lightning advises sync_dist for epoch metrics under DDP; ours are already global (gathered
    # predictions, one score broadcast from rank 0), and averaging equal values is a wasted all-reduce.
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+: faster, detection-safe
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor=MONITOR, mode="max", save_top_k=1, save_last=True,
        auto_insert_metric_name=False,
    )
    out = Path(cfg.out)
    return pl.Trainer(
        accelerator=cfg.accelerator, devices=_devices(cfg.devices), num_nodes=cfg.num_nodes,
        strategy=cfg.strategy, precision=cfg.precision,
        # a step budget replaces the epoch count (else the default 20 epochs could end it first)
        max_epochs=-1 if cfg.max_steps > 0 else cfg.epochs, max_steps=cfg.max_steps,
        gradient_clip_val=cfg.grad_clip or None, gradient_clip_algorithm="norm",
        default_root_dir=out,  # Lightning's SLURM hpc_ckpt_N.ckpt lands in the run folder, not the cwd
        use_distributed_sampler=False,  # our EpochSampler and val DistributedSampler shard themselves
        callbacks=[checkpoint],
        logger=build_loggers(cfg.loggers, out, experiment=MLFLOW_EXPERIMENT),
        limit_train_batches=_limit(cfg.limit_train_batches), limit_val_batches=_limit(cfg.limit_val_batches),
        log_every_n_steps=cfg.log_every_n_steps, num_sanity_val_steps=1, enable_progress_bar=True,
    )


def main(args: argparse.Namespace) -> int:
    import pytorch_lightning as pl
    from pytorch_lightning.utilities import rank_zero_info

    from cxrdet.detector.data import DetectorDataModule, load_table
    from cxrdet.detector.export import export_checkpoint
    from cxrdet.detector.module import DetectorModule

    cfg, resume = resolve_config(args)
    out = Path(cfg.out)
    ckpt_dir = out / CKPT_DIR
    last = ckpt_dir / LAST
    table = load_table(cfg)  # every input checked before any process group or GPU is touched
    cfg = dataclasses.replace(cfg, cache_size=table.cache_size, cache_voi=table.cache_voi)

    pl.seed_everything(cfg.seed, workers=True)
    trainer = build_trainer(cfg, ckpt_dir)
    if trainer.is_global_zero:
        cfg.save(out / CONFIG_FILE)
    # Fresh runs read --weights once; resumed runs (and load_from_checkpoint) take them from the checkpoint.
    try:
        module = DetectorModule(cfg.to_dict(), load_weights=resume is None)
    except UserError as e:  # the weights files: name the flags that set them
        raise UserError(f"{e} (flags: --arch, --weights, --backbone-weights)") from None
    apply_sync_batchnorm(trainer, module, cfg)
    datamodule = DetectorDataModule(cfg, table)
    rank_zero_info(f"resuming {out} from {resume}" if resume else f"starting a fresh run in {out}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None, weights_only=True)

    # A run stopped by --max-steps mid-epoch has newer weights than the epoch-end last.ckpt.
    trainer.save_checkpoint(last, weights_only=False)
    trainer.strategy.barrier()
    if trainer.is_global_zero:
        best = trainer.checkpoint_callback.best_model_path
        source = Path(best) if best and Path(best).is_file() else last
        export_checkpoint(source, out / EXPORT_DIR)
        print(f"run folder {out}: best {MONITOR} {trainer.checkpoint_callback.best_model_score}, "
              f"artifact {out / EXPORT_DIR} (from {source.name})")
    return 0
