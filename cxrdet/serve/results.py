"""One prediction -> the JSON the API returns, and the short-lived store of recent results.

Findings are the gated detections (what ``cxrdet infer`` writes to the submission) in ORIGINAL
pixels, highest score first; the PredictionString is formatted by the submission writer's own
function. ``display`` is the overlay layout (:func:`cxrdet.inference.overlay.overlay_layout`) of
the best :data:`PAGE_MAX_BOXES` findings from score 0 on, in the pixels of the overlay picture,
so the page draws its boxes and labels exactly where the overlay PNGs put them.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from cxrdet.classes import CLASS_NAMES, NO_FINDING, NUM_FINDINGS
from cxrdet.formats.image_level import class_max_scores
from cxrdet.formats.submission import format_prediction_string
from cxrdet.inference.overlay import OverlayLayout, class_colour, overlay_layout
from cxrdet.detections import Detections
from cxrdet.inference.predictor import ImageResult, keep_confident
from cxrdet.serve.classifier import classifier_block

PAGE_MAX_BOXES = 100  # boxes the page can show (the slider hides the rest); more is clutter


def new_request_id() -> str:
    """A random id for a result (unguessable: results of other users are not listed)."""
    return secrets.token_urlsafe(12)


def findings(det: Detections) -> list[dict]:
    det = det.select(det.class_ids != NO_FINDING).sorted()
    return [{"class_id": int(c), "class_name": CLASS_NAMES[int(c)], "score": float(s),
             "box": [float(v) for v in b]} for b, s, c in zip(det.boxes, det.scores, det.class_ids)]


def image_level(result: ImageResult) -> dict:
    """Per finding class the highest fused score before the gate (the image-level CSV's p_k)."""
    p = class_max_scores(result.fused)
    return {"p_abnormal": result.p_abnormal,
            "classes": [{"class_id": k, "class_name": CLASS_NAMES[k], "p": float(p[k])} for k in range(NUM_FINDINGS)]}


def display_block(layout: OverlayLayout, request_id: str) -> dict:
    """The overlay layout as the page draws it (picture pixels; colours as CSS rgb)."""
    def rgb(class_id: int) -> str:
        b, g, r = class_colour(class_id)
        return f"rgb({r},{g},{b})"

    items = [{"class_id": i.class_id, "score": i.score, "text": i.text, "box": list(i.box), "colour": rgb(i.class_id),
              "label": None if i.label is None else {"rect": list(i.label.rect),
                                                     "leader": None if i.label.leader is None else list(i.label.leader)}}
             for i in layout.items]
    banner = None
    if layout.banner is not None:
        banner = {"text": layout.banner[0], "rect": list(layout.banner[1].rect)}
    return {"width": layout.picture_hw[1], "height": layout.picture_hw[0], "items": items, "banner": banner,
            "image_url": f"/v1/results/{request_id}/image.png",
            "overlay_url": f"/v1/results/{request_id}/overlay.png"}


def response_body(result: ImageResult, request_id: str, versions: dict, timings: dict,
                  conf: float | None = None, has_sr: bool = False, class_names: list[str] | None = None) -> dict:
    """The API's answer; ``conf`` filters the findings as ``cxrdet infer --conf`` filters the
    submission (the page still shows every box from score 0, as infer's overlays do)."""
    s = result.sample
    submitted = keep_confident(result.final, conf)
    layout = overlay_layout(s.image.shape[:2], result.final, s.orig_hw, min_score=0.0, max_boxes=PAGE_MAX_BOXES)
    return {
        "request_id": request_id,
        "image_id": s.image_id,
        "height": int(s.orig_hw[0]),
        "width": int(s.orig_hw[1]),
        "findings": findings(submitted),
        "p_abnormal": result.p_abnormal,
        "gate_zone": result.zone,
        "image_level": image_level(result),
        "prediction_string": format_prediction_string(submitted),
        "models": versions,
        "timings": {k: round(float(v), 2) for k, v in timings.items()},
        "display": display_block(layout, request_id),
        # the image-level classifier's probabilities and heatmaps (None without --classifier)
        "classifier": classifier_block(result.classifier, class_names, request_id) if class_names else None,
        # the SR needs the source's UIDs and patient: DICOM uploads only
        "downloads": {"overlay_png": f"/v1/results/{request_id}/overlay.png",
                      "sr": f"/v1/results/{request_id}/sr.dcm" if has_sr else None},
    }


@dataclass
class Stored:
    result: ImageResult
    at: float
    header: object = None  # the DICOM upload's header (no pixels), for its SR; None for PNG/JPEG


class ResultStore:
    """The last ``capacity`` results for at most ``ttl_s`` seconds (bounded memory)."""

    def __init__(self, capacity: int = 32, ttl_s: float = 600.0) -> None:
        self.capacity, self.ttl_s = capacity, ttl_s
        self._items: OrderedDict[str, Stored] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, request_id: str, result: ImageResult, header=None) -> None:
        with self._lock:
            self._items[request_id] = Stored(result, time.monotonic(), header)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, request_id: str) -> Stored | None:
        """The result (and upload header) of ``request_id``; None when unknown or expired."""
        with self._lock:
            now = time.monotonic()
            for key in [k for k, v in self._items.items() if now - v.at > self.ttl_s]:
                del self._items[key]
            return self._items.get(request_id)

    def __len__(self) -> int:
        return len(self._items)


def class_filter(text: str | None) -> np.ndarray | None:
    """``"0,3,11"`` -> the class ids to keep (None: all); ValueError on anything else."""
    if text is None or text == "":
        return None
    ids = [int(t) for t in text.split(",")]
    if any(not 0 <= i < NUM_FINDINGS for i in ids):
        raise ValueError(f"class ids must be in 0..{NUM_FINDINGS - 1}, got {text!r}")
    return np.asarray(ids, dtype=np.int64)
