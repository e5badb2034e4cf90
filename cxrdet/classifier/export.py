"""The classifier artifact: ``model.pt`` (plain state dict) + ``config.json`` (ClassifierConfig).

Both are safe to load from untrusted places: the weights with ``weights_only=True``, the config
as JSON. Inference never needs Lightning or the training data.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from cxrdet.classifier.backbones import build_backbone
from cxrdet.classifier.config import ClassifierConfig
from cxrdet.errors import UserError
from cxrdet.formats import atomic

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"


def export_checkpoint(ckpt_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the artifact of a training checkpoint (best.ckpt or last.ckpt) into ``out_dir``."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    cfg = ClassifierConfig.from_dict(ckpt["hyper_parameters"]["config"], source=str(ckpt_path))
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    out = Path(out_dir)
    with atomic.atomic_path(out / MODEL_FILE) as tmp:
        torch.save(state, tmp)
    cfg.save(out / CONFIG_FILE)
    return out


def load_classifier(artifact_dir: str | os.PathLike,
                    map_location: str | torch.device = "cpu") -> tuple[nn.Module, ClassifierConfig]:
    """(backbone in eval mode on ``map_location``, its ClassifierConfig) from an exported artifact."""
    root = Path(artifact_dir)
    weights = root / MODEL_FILE
    if not weights.is_file():
        raise UserError(f"classifier artifact {root} has no {MODEL_FILE}; expected the export/ folder of a "
                        "training run (cxrdet train-classifier writes RUN_DIR/export/model.pt + config.json)")
    cfg = ClassifierConfig.load(root / CONFIG_FILE)
    if not cfg.class_names or not cfg.task:
        raise UserError(f"{root / CONFIG_FILE} records no class_names/task; it is not a classifier artifact")
    try:
        model = backbone_with_weights(cfg.arch, len(cfg.class_names), torch.load(weights, map_location="cpu",
                                                                                  weights_only=True))
    except Exception as e:
        raise UserError(f"cannot load {weights} into a {cfg.arch} built from {root / CONFIG_FILE}: {e}") from None
    return model.to(map_location).eval(), cfg


def backbone_with_weights(arch: str, num_outputs: int, state: dict) -> nn.Module:
    """The backbone holding ``state`` (strict), built without the random initialisation the
    weights would overwrite: a ResNet-50's init alone takes 0.2 s of a CPU, paid by every
    ``classify`` run and every ``serve`` start. Built on the meta device, then the loaded tensors
    are assigned; a module that would keep a tensor not in ``state`` is built the plain way."""
    with torch.device("meta"):
        model = build_backbone(arch, num_outputs)
    model.load_state_dict(state, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # e.g. a non-persistent buffer
        model = build_backbone(arch, num_outputs)
        model.load_state_dict(state)
    return model
