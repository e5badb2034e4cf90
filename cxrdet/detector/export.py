"""The inference artifact: ``model.pt`` (plain state dict) + ``config.json`` (DetectorConfig).

Both are safe to load from untrusted places: the weights with ``weights_only=True``, the config
as JSON. Inference never needs Lightning or the training data.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from cxrdet.detector.config import DetectorConfig
from cxrdet.detector.model import build_detector
from cxrdet.errors import UserError
from cxrdet.formats.atomic import atomic_path

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"


def export_checkpoint(ckpt_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the artifact of a training checkpoint (best.ckpt or last.ckpt) into ``out_dir``."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    cfg = DetectorConfig.from_dict(ckpt["hyper_parameters"]["config"], source=str(ckpt_path))
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return write_artifact(state, cfg, out_dir)


def write_artifact(state: dict[str, torch.Tensor], cfg: DetectorConfig, out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / MODEL_FILE) as tmp:  # a crash never leaves a half-written model.pt
        torch.save(state, tmp)
    cfg.save(out / CONFIG_FILE)
    return out


def load_detector(artifact_dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, DetectorConfig]:
    """(model in eval mode on ``map_location``, its DetectorConfig) from an exported artifact."""
    root = Path(artifact_dir)
    weights = root / MODEL_FILE
    if not weights.is_file():
        raise UserError(
            f"detector artifact {root} has no {MODEL_FILE}; expected the export/ folder of a "
            "training run (cxrdet train writes RUN_DIR/export/model.pt + config.json)"
        )
    cfg = DetectorConfig.load(root / CONFIG_FILE)
    model = build_detector(cfg)  # architecture only: the training-time weight files are not needed
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:
        raise UserError(f"cannot load {weights} into a {cfg.model} built from {root / CONFIG_FILE}: {e}") from None
    return model.to(map_location).eval(), cfg
