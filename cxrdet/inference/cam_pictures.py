"""Heatmap overlay pictures: the image with one class's Grad-CAM heatmap blended in, the class
name and probability written on a banner at the bottom-left.

Drawn on the cache-size image, which has the original's aspect ratio, enlarged like the box
overlays (:func:`cxrdet.inference.overlay.picture_hw`) so the text stays legible; the blend is
the ``grad-cam`` package's ``show_cam_on_image`` (JET colour map, half image, half heatmap).
One PNG per image and class: ``<image id>_cam<class index>.png`` under the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from pytorch_grad_cam.utils.image import show_cam_on_image

from cxrdet.errors import safe_child
from cxrdet.formats.atomic import write_bytes
from cxrdet.inference.overlay import FONT, picture_hw

IMAGE_WEIGHT = 0.55  # a little more image than heatmap: the anatomy stays readable under the colours


def cam_picture(image: np.ndarray, heatmap: np.ndarray, text: str) -> np.ndarray:
    """BGR uint8 picture of a uint8 ``[h, w]`` image with a ``[h', w']`` heatmap in [0, 1]."""
    h, w = picture_hw(image.shape[:2])
    grey = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR) if (h, w) != image.shape[:2] else image
    mask = cv2.resize(np.asarray(heatmap, np.float32), (w, h), interpolation=cv2.INTER_LINEAR).clip(0, 1)
    base = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR).astype(np.float32) / 255.0
    canvas = show_cam_on_image(base, mask, use_rgb=False, image_weight=IMAGE_WEIGHT)
    scale = max(0.5, max(h, w) / 1400)
    thick = max(1, int(round(scale * 2)))
    (tw, th), base_line = cv2.getTextSize(text, FONT, scale, thick)
    top = h - th - base_line - 12  # bottom-left: the box overlays keep their banner at the top-left
    cv2.rectangle(canvas, (0, top), (min(w, tw + 12), h), (0, 0, 0), -1)
    cv2.putText(canvas, text, (6, top + th + 6), FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return canvas


def cam_picture_path(folder: str | os.PathLike, image_id: str, class_index: int) -> Path:
    """Where the picture of ``image_id`` and class ``class_index`` goes (ids never escape ``folder``)."""
    return safe_child(folder, image_id, f"_cam{int(class_index):02d}.png")


def write_cam_picture(folder: str | os.PathLike, image_id: str, class_index: int, image: np.ndarray,
                      heatmap: np.ndarray, text: str) -> Path:
    """Write one overlay PNG atomically; returns its path."""
    ok, buf = cv2.imencode(".png", cam_picture(image, heatmap, text))
    if not ok:
        raise ValueError(f"OpenCV could not encode the heatmap picture of {image_id}")
    return write_bytes(cam_picture_path(folder, image_id, class_index), buf.tobytes())
