"""Grad-CAM heatmaps of a trained classifier with the ``grad-cam`` package (pytorch-grad-cam).

The layer each backbone is explained at comes from :data:`cxrdet.classifier.backbones.TARGET_LAYERS`.
Which classes get a heatmap: ``top3`` (any ``topK``: the K most probable classes, leaving out the
aggregate ``abnormal`` output, which would take a slot on nearly every abnormal film), ``all``, or
a comma list of class indices or names. Heatmaps are computed on the unflipped view (hflip TTA
changes the probabilities only), are min-max scaled to [0, 1] per image and class by the package,
averaged over ensembled classifiers, and returned at the cache size of each image, which has the
original's aspect ratio (the model saw the image squashed to a square).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from cxrdet.classifier.backbones import target_layer
from cxrdet.classifier.config import ClassifierConfig
from cxrdet.classifier.predict import batch_tensor
from cxrdet.classifier.transforms import to_model_input
from cxrdet.errors import UserError

AGGREGATE = "abnormal"  # the any-finding output: explained only when asked for by name or index
METHOD = "GradCAM"


@dataclass(frozen=True)
class CamClasses:
    """Either the ``top`` most probable classes or a fixed list of class indices."""

    top: int | None = 3
    fixed: tuple[int, ...] = ()

    def choose(self, probabilities: np.ndarray, class_names: Sequence[str]) -> list[int]:
        """The class indices to explain for one image, most probable first."""
        if self.top is None:
            return list(self.fixed)
        order = [int(i) for i in np.argsort(-np.asarray(probabilities), kind="stable") if class_names[i] != AGGREGATE]
        return order[: self.top]


def parse_cam_classes(spec: str, class_names: Sequence[str]) -> CamClasses:
    """``top3`` / ``topK`` / ``all`` / ``0,3,Cardiomegaly`` -> :class:`CamClasses`."""
    text = spec.strip()
    if m := re.fullmatch(r"top(\d+)", text):
        if int(m.group(1)) < 1:
            raise UserError(f"--cam-classes {spec}: topK needs K >= 1")
        return CamClasses(top=int(m.group(1)))
    if text == "all":
        return CamClasses(top=None, fixed=tuple(range(len(class_names))))
    chosen = []
    for item in (t.strip() for t in text.split(",")):
        if item.isdigit() and int(item) < len(class_names):
            chosen.append(int(item))
        elif item in class_names:
            chosen.append(list(class_names).index(item))
        else:
            raise UserError(f"--cam-classes {spec}: {item!r} is neither a class index 0..{len(class_names) - 1} nor "
                            f"a class name of the classifier ({', '.join(class_names)}); or use top3 / all")
    return CamClasses(top=None, fixed=tuple(dict.fromkeys(chosen)))


class CamExplainer:
    """Grad-CAM for one or several (ensembled) classifiers of the same classes."""

    def __init__(self, models: Sequence[tuple[nn.Module, ClassifierConfig]], device: torch.device,
                 batch_size: int = 16) -> None:
        self.models = list(models)
        self.device = device
        self.batch_size = int(batch_size)
        self.cams = [GradCAM(model=m, target_layers=[target_layer(m, cfg.arch)]) for m, cfg in self.models]

    def explain(self, images: Sequence[np.ndarray], classes: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """For each cache image, float32 ``[len(classes[i]), h, w]`` heatmaps in [0, 1]."""
        # one (image, slot, class) triple per heatmap: batches mix images and classes freely
        triples = [(i, k, c) for i, cl in enumerate(classes) for k, c in enumerate(cl)]
        out = [np.zeros((len(cl), *np.asarray(im).shape[:2]), np.float32) for im, cl in zip(images, classes)]
        for (model, cfg), cam in zip(self.models, self.cams):
            for start in range(0, len(triples), self.batch_size):
                chunk = triples[start:start + self.batch_size]
                batch = batch_tensor([images[i] for i, _, _ in chunk], cfg.size, self.device)
                x = to_model_input(batch, cfg.image_mean, cfg.image_std)
                maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for _, _, c in chunk])
                for (i, k, _), m in zip(chunk, maps):
                    h, w = out[i].shape[1:]
                    out[i][k] += cv2.resize(np.asarray(m, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        return [np.clip(o / len(self.models), 0.0, 1.0) for o in out]

    def close(self) -> None:
        """Remove the hooks the package put on the models (they also stay usable without)."""
        for cam in self.cams:
            cam.activations_and_grads.release()
