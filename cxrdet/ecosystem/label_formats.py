"""COCO and YOLO label files for cache-pixel boxes (pure: no image I/O, no torch).

Boxes come in as xyxy cache pixels with class ids 0..13 (:mod:`cxrdet.boxes` convention);
images without findings are kept as images with no annotation (COCO) or an empty ``.txt``
(YOLO), which both frameworks read as background images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cxrdet.boxes import HW
from cxrdet.classes import CLASS_NAMES, NUM_FINDINGS

DECIMALS = 4  # COCO bbox precision: 1e-4 px, far below anything that changes an IoU
YOLO_DECIMALS = 6  # normalised coordinates: 1e-6 of a side is < 0.01 px at 8192 px
FINDING_NAMES = CLASS_NAMES[:NUM_FINDINGS]  # class 14 "No finding" is an image without boxes


def coco_categories() -> list[dict]:
    """Category ids 0..13 = cxrdet class ids, so no id mapping is needed anywhere."""
    return [{"id": i, "name": name, "supercategory": "finding"} for i, name in enumerate(FINDING_NAMES)]


def coco_dataset(ids: Sequence[str], targets: Mapping[str, tuple[np.ndarray, np.ndarray]],
                 cache_hw: Mapping[str, HW], info: dict) -> dict:
    """A COCO instances dict: one image entry per id (``<id>.png``), one annotation per box.

    ``targets[id] = (boxes [N, 4] xyxy cache px, class_ids [N] 0..13)``. COCO ``bbox`` is
    ``[x, y, width, height]``; image ids are 1-based integers in ``ids`` order.
    """
    images, annotations = [], []
    for number, image_id in enumerate(ids, start=1):
        h, w = cache_hw[image_id]
        images.append({"id": number, "file_name": f"{image_id}.png", "height": int(h), "width": int(w),
                       "cxrdet_image_id": image_id})
        boxes, cls = targets[image_id]
        for box, c in zip(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(cls).reshape(-1)):
            x0, y0, x1, y1 = (round(float(v), DECIMALS) for v in box)
            bw, bh = round(x1 - x0, DECIMALS), round(y1 - y0, DECIMALS)
            annotations.append({"id": len(annotations) + 1, "image_id": number, "category_id": int(c),
                                "bbox": [x0, y0, bw, bh], "area": round(bw * bh, DECIMALS), "iscrowd": 0})
    return {"info": info, "images": images, "annotations": annotations, "categories": coco_categories()}


def yolo_lines(boxes: np.ndarray, class_ids: np.ndarray, hw: HW) -> str:
    """YOLO label text: one ``class cx cy w h`` line per box, normalised by the image size."""
    h, w = (float(v) for v in hw)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / (2 * w), (b[:, 1] + b[:, 3]) / (2 * h)
    bw, bh = (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h
    rows = [f"{int(c)} " + " ".join(f"{v:.{YOLO_DECIMALS}f}" for v in vals)
            for c, *vals in zip(np.asarray(class_ids).reshape(-1), cx, cy, bw, bh)]
    return "".join(line + "\n" for line in rows)


def yolo_data_yaml(root: str, splits: Mapping[str, str]) -> dict:
    """ultralytics' dataset YAML: root path, image folders per split, class names in id order."""
    return {"path": root, **dict(splits), "nc": len(FINDING_NAMES),
            "names": {i: name for i, name in enumerate(FINDING_NAMES)}}
