"""torchvision backbones by name, weights from a local file only, and the Grad-CAM layer table.

Every backbone is built with ``weights=None`` (nothing is downloaded) and its own classification
head sized to the classes. ``--weights`` is a local torchvision state dict (e.g. ImageNet),
read with ``torch.load(weights_only=True)`` so a pickled file cannot run code; keys whose shape
differs from the model's (the 1000-class ImageNet head) are skipped and said so.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import torch
from torch import nn
from torchvision import models

from cxrdet.errors import UserError

# The last convolutional feature layer of each backbone, by module path: what Grad-CAM hooks
# (pytorch-grad-cam's target_layers) and what an image-level heatmap should explain.
TARGET_LAYERS: dict[str, str] = {
    "densenet121": "features.norm5",
    "resnet18": "layer4",
    "resnet50": "layer4",
    "efficientnet_b0": "features",
    "efficientnet_b1": "features",
    "efficientnet_b2": "features",
    "efficientnet_b3": "features",
    "efficientnet_b4": "features",
    "mobilenet_v3_small": "features",
}
# torchvision's hosted DenseNet files predate its module names ("norm.1" for "norm1"); its own
# loader renames them with this pattern (torchvision.models.densenet._load_state_dict).
_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
MIN_LOADED_SHARE = 0.5  # fewer matching keys than this means the file is for another architecture


def build_backbone(arch: str, num_outputs: int) -> nn.Module:
    """torchvision ``arch`` from scratch with a ``num_outputs``-way head."""
    if arch not in TARGET_LAYERS:
        raise ValueError(f"unknown backbone {arch!r}; expected one of {sorted(TARGET_LAYERS)}")
    return models.get_model(arch, weights=None, num_classes=int(num_outputs))


def target_layer(model: nn.Module, arch: str) -> nn.Module:
    """The module Grad-CAM should hook for ``arch`` (see :data:`TARGET_LAYERS`)."""
    return model.get_submodule(TARGET_LAYERS[arch])


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A local state dict, loaded without unpickling arbitrary objects."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"weights file {path} does not exist; pass a local torchvision state dict (.pth)") from None
    except Exception as e:  # weights_only refuses pickled objects with an UnpicklingError
        raise UserError(f"weights file {path} was refused: it is not a plain state dict of tensors "
                        f"loadable with weights_only=True ({type(e).__name__}: {str(e).splitlines()[0]}). "
                        "Save it with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a Lightning/training checkpoint's weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"weights file {path} holds a {type(state).__name__}, expected a state dict {{name: tensor}}")
    return state


def load_weights(model: nn.Module, path: str | os.PathLike, arch: str,
                 log: Callable[[str], None] = print) -> int:
    """Copy the matching tensors of ``path`` into ``model``; returns how many were loaded."""
    state = read_state_dict(path)
    own = model.state_dict()
    for prefix in ("model.", "module."):  # our training checkpoints / DDP-wrapped saves
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if arch.startswith("densenet"):
        state = {(_DENSENET_OLD_KEY.sub(r"\1\2", k)): v for k, v in state.items()}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    if len(usable) < MIN_LOADED_SHARE * len(own):
        raise UserError(f"weights file {path}: only {len(usable)} of the {len(own)} tensors of a {arch} match by "
                        f"name and shape; expected a {arch} state dict (torchvision key names)")
    model.load_state_dict(usable, strict=False)
    note = f"; skipped {len(skipped)} with another shape ({', '.join(skipped[:4])})" if skipped else ""
    log(f"loaded {len(usable)}/{len(own)} tensors from {path}{note}")
    return len(usable)
