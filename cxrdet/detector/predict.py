"""Run a detector on cache images: uint8 grey images in, :class:`Detections` in cache pixels out."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cxrdet.classes import label_to_class
from cxrdet.detections import Detections
from cxrdet.detector.transforms import to_model_input


def outputs_to_detections(outputs: list[dict[str, torch.Tensor]]) -> list[Detections]:
    """torchvision outputs (labels 1..14) -> Detections with class_ids 0..13, highest score first."""
    dets = []
    for out in outputs:
        det = Detections(
            out["boxes"].detach().float().cpu().numpy(),
            out["scores"].detach().float().cpu().numpy(),
            label_to_class(out["labels"].detach().cpu().numpy().astype(np.int64)),
        )
        dets.append(det.sorted())
    return dets


def _as_tensors(images) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.ndim not in (3, 4):
            raise ValueError(f"a batch tensor must be [B, h, w] or [B, C, h, w], got {tuple(images.shape)}")
        return list(images)
    return [torch.from_numpy(np.ascontiguousarray(im)) if isinstance(im, np.ndarray) else im for im in images]


@torch.inference_mode()
def predict(model: nn.Module, images) -> list[Detections]:
    """Detections per image in the pixels of the image given (cache pixels), class_ids 0..13.

    ``images``: a list of uint8 ``[h, w]`` arrays/tensors (sizes may differ), or a batch tensor
    ``[B, h, w]`` uint8 or ``[B, 3, h, w]`` float in [0, 1]. Runs on the model's device; the model
    must be in eval mode (``load_detector`` returns it so).
    """
    tensors = _as_tensors(images)
    if not tensors:
        return []
    device = next(model.parameters()).device
    inputs = [to_model_input(t.to(device, non_blocking=True)) for t in tensors]
    return outputs_to_detections(model(inputs))
