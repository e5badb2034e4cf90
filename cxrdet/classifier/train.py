"""``cxrdet train-classifier``: an image-level classifier on the HDF5 cache (1 CPU to many GPU nodes).

Run folder (``--out RUN_DIR``), the same layout as ``cxrdet train``::

    config.json                 the full resolved ClassifierConfig (class names, task, pos_weight)
    checkpoints/best.ckpt       best val_score (macro AUROC multi-label, accuracy multi-class)
    checkpoints/last.ckpt       end of the latest epoch (what --resume continues from)
    hpc_ckpt_N.ckpt             Lightning's SLURM checkpoint before a requeue (also resumable)
    logs/version_N/metrics.csv  CSVLogger
    tb/version_N/               TensorBoard                (--logger csv,tensorboard: the default)
    mlflow.db + mlartifacts/    local MLflow store         (--logger mlflow; see cxrdet.training.loggers)
    export/model.pt + config.json   inference artifact from best.ckpt (see classifier.export)

The label source (VinBigData train.csv, NIH-style CSV, ImageFolder directory) is recognised
from ``--labels``. Every flag defaults to the ClassifierConfig value; with ``--resume`` the
run's config.json is the base and only flags given explicitly change it (architecture and
validation flags may not change). ``--resume auto`` starts fresh in an empty run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from cxrdet.classifier.config import ARCHITECTURE_FIELDS, ARCHS, OPTIMIZERS, VALIDATION_FIELDS, ClassifierConfig
from cxrdet.errors import UserError
from cxrdet.flags import add_training_device_flag, apply_device_shorthand
from cxrdet.training.loggers import add_logger_flag, loggers_from_flag
from cxrdet.training.resume import (CKPT_DIR, LAST, RESUME_ALWAYS, RESUME_AUTO, changed_field, checkpoint_to_resume,
                                    locked_field_error)

CONFIG_FILE = "config.json"
EXPORT_DIR = "export"
PATH_FIELDS = ("cache", "labels", "folds", "weights")
INTERRUPT_NOTE = ("checkpoints written so far are kept (RUN/checkpoints/last.ckpt at each epoch end); "
                  "rerun with --resume to continue")

# flag -> (type, help); dest = config field (dashes -> underscores).
FLAGS: dict[str, tuple[type, str]] = {
    "--cache": (str, "HDF5 cache from `cxrdet prepare` (any size: images are resized to --size on the fly)"),
    "--labels": (str, "VinBigData train.csv (15 soft targets), NIH-style CSV (Image Index, Finding Labels), "
                      "or a folder with one sub-folder per class (multi-class)"),
    "--folds": (str, "FOLDS.csv (image_id,fold)"),
    "--fold": (int, "validation fold; the other folds train"),
    "--arch": (str, "torchvision backbone (resnet18 / mobilenet_v3_small are the light CPU options)"),
    "--weights": (str, "local torchvision state dict (e.g. ImageNet .pth; head skipped if its shape differs); "
                       "read with weights_only=True"),
    "--size": (int, "model input side in pixels (square)"),
    "--max-pos-weight": (float, "cap of the BCE pos_weight (= negatives/positives per class)"),
    "--hflip-prob": (float, "horizontal flip probability"),
    "--affine-prob": (float, "probability of a scale/shift jitter"),
    "--scale": (float, "zoom jitter (+-)"),
    "--shift": (float, "shift jitter as a fraction of the side (+-)"),
    "--color-prob": (float, "probability of a brightness/contrast jitter"),
    "--brightness": (float, "brightness jitter (+- fraction of full range)"),
    "--contrast": (float, "contrast jitter (x 1 +-)"),
    "--batch-size": (int, "images per device per step"),
    "--val-batch-size": (int, "images per device per validation step"),
    "--workers": (int, "DataLoader workers per device"),
    "--optimizer": (str, "optimizer"),
    "--lr": (float, "peak learning rate for the TOTAL batch (scale linearly with batch x devices x nodes)"),
    "--weight-decay": (float, "weight decay"),
    "--warmup-steps": (int, "linear warmup steps before cosine decay"),
    "--grad-clip": (float, "clip the gradient norm (0 = off)"),
    "--epochs": (int, "epochs"),
    "--max-steps": (int, "stop after this many optimizer steps (-1 = by epochs)"),
    "--accelerator": (str, "cpu, gpu, auto, ..."),
    "--devices": (str, "devices per node: auto, a count, or a list like 0,1"),
    "--num-nodes": (int, "nodes (torchrun / SLURM)"),
    "--strategy": (str, "auto, ddp, ddp_spawn, ..."),
    "--precision": (str, "32-true, 16-mixed, bf16-mixed"),
    "--seed": (int, "seed of sampling, augmentation and initialisation"),
    "--limit-train-batches": (float, "fraction (<=1) or number (>1) of training batches per epoch"),
    "--limit-val-batches": (float, "fraction or number of validation batches (the metric wants 1.0)"),
    "--log-every-n-steps": (int, "logging cadence"),
}
CHOICES = {"--arch": ARCHS, "--optimizer": OPTIMIZERS}
PATH_FLAGS = {"--cache", "--labels", "--folds", "--weights"}


def _metavar(flag: str, typ: type) -> str:
    if flag in CHOICES:
        return "{" + ",".join(CHOICES[flag]) + "}"
    if flag in PATH_FLAGS:
        return "PATH"
    return {int: "N", float: "X"}.get(typ, "VALUE")

MLFLOW_EXPERIMENT = "cxrdet-classifier"  # one experiment for all classifier runs; runs are named by folder


def get_args_parser() -> argparse.ArgumentParser:
    defaults = ClassifierConfig()
    p = argparse.ArgumentParser(
        description="Train an image-level classifier on the HDF5 cache (PyTorch Lightning; 1 CPU, 1 GPU, DDP, "
                    "multi-node). Multi-label (VinBigData / NIH CSV) or multi-class (folder per class).",
        epilog="See docs/classifier.md for the reference recipes and docs/training.md for scaling out.",
    )
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (checkpoints, logs, config.json, export/)")
    for flag, (typ, text) in FLAGS.items():
        dest = flag[2:].replace("-", "_")
        p.add_argument(flag, type=typ, default=None, choices=CHOICES.get(flag), metavar=_metavar(flag, typ),
                       help=f"{text} (default: {getattr(defaults, dest)!r})")
    add_logger_flag(p)
    add_training_device_flag(p)
    p.add_argument("--resume", nargs="?", const=RESUME_ALWAYS, default=None, choices=(RESUME_AUTO, RESUME_ALWAYS),
                   metavar=RESUME_AUTO,
                   help="continue RUN_DIR from checkpoints/last.ckpt (same global step and optimizer state); "
                        "'--resume auto' continues if RUN_DIR holds a run and starts fresh otherwise")
    return p


def resolve_config(args: argparse.Namespace) -> tuple[ClassifierConfig, Path | None]:
    """Defaults <- RUN_DIR/config.json (when resuming) <- flags given explicitly; and the checkpoint."""
    apply_device_shorthand(args)
    out = Path(args.out)
    ckpt = checkpoint_to_resume(out, args.resume)
    base = ClassifierConfig.load(out / CONFIG_FILE) if ckpt else ClassifierConfig()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ClassifierConfig)
             if getattr(args, f.name, None) is not None and f.name != "out"}
    name = changed_field(base, given, (*ARCHITECTURE_FIELDS, *VALIDATION_FIELDS), PATH_FIELDS) if ckpt else None
    if name is not None:
        raise locked_field_error(base, given, name, "--" + name.replace("_", "-"), out / CONFIG_FILE, ckpt,
                                 architecture=name in ARCHITECTURE_FIELDS, is_path=name in PATH_FIELDS)
    cfg = dataclasses.replace(base, **given, out=str(out))
    cfg.loggers = loggers_from_flag(cfg.loggers)
    for name in ("cache", "labels", "folds"):
        if not getattr(cfg, name):
            raise UserError(f"--{name} is required (or --resume a run whose config.json names it)")
    cfg.check("command line")
    return cfg, ckpt


def record_table(cfg: ClassifierConfig, table) -> ClassifierConfig:
    """The config with what the cache and labels say (size, windowing, classes, pos_weight)."""
    return dataclasses.replace(cfg, cache_size=table.cache_size, cache_voi=table.cache_voi,
                               label_source=table.labels.source, task=table.labels.task,
                               class_names=list(table.labels.class_names), pos_weight=list(table.pos_weight))


def main(args: argparse.Namespace) -> int:
    import pytorch_lightning as pl
    from pytorch_lightning.utilities import rank_zero_info

    from cxrdet.classifier.data import ClassifierDataModule, load_table, print_notes
    from cxrdet.classifier.export import export_checkpoint
    from cxrdet.classifier.module import MONITOR, ClassifierModule
    from cxrdet.training.trainer import build_trainer

    cfg, resume = resolve_config(args)
    out = Path(cfg.out)
    ckpt_dir = out / CKPT_DIR
    table = load_table(cfg)  # every input checked before any process group or GPU is touched
    cfg = record_table(cfg, table)
    pl.seed_everything(cfg.seed, workers=True)
    trainer = build_trainer(cfg, ckpt_dir, MONITOR, experiment=MLFLOW_EXPERIMENT)
    if trainer.is_global_zero:
        print_notes(table)
        cfg.save(out / CONFIG_FILE)
    module = ClassifierModule(cfg.to_dict(), load_weights=resume is None)
    rank_zero_info(f"{cfg.task} {cfg.arch} on {len(cfg.class_names)} classes ({cfg.label_source} labels), "
                   f"{len(table.train_ids)} training / {len(table.val_ids)} validation images; "
                   + (f"resuming {out} from {resume}" if resume else f"starting a fresh run in {out}"))
    trainer.fit(module, datamodule=ClassifierDataModule(cfg, table), ckpt_path=str(resume) if resume else None,
                weights_only=True)
    last = ckpt_dir / LAST
    trainer.save_checkpoint(last, weights_only=False)  # --max-steps may stop mid-epoch: newest weights
    trainer.strategy.barrier()
    if trainer.is_global_zero:
        best = trainer.checkpoint_callback.best_model_path
        source = Path(best) if best and Path(best).is_file() else last
        export_checkpoint(source, out / EXPORT_DIR)
        print(f"run folder {out}: best {MONITOR} ({cfg.monitor_name}) {trainer.checkpoint_callback.best_model_score}, "
              f"artifact {out / EXPORT_DIR} (from {source.name})")
    return 0
