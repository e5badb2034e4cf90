"""The image-level classifier in ``cxrdet serve --classifier``: probabilities and Grad-CAM heatmaps.

Loaded like ``cxrdet infer --classifier`` (:func:`cxrdet.inference.infer.load_classifiers`: same
checks, same cache windowing as the detectors) and run on the same decoded image before the
detectors, so a gate trained with classifier evidence gets it exactly as in the batch command.
Each result carries the probability of every class and the heatmaps of the ``--cam-classes``
(top 3 findings by default), kept with the result for ``/v1/results/ID/heatmap/K.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cxrdet.classifier.cam import CamClasses, CamExplainer
from cxrdet.formats.image_level import classifier_column
from cxrdet.inference.predictor import BatchResult, Predictor
from cxrdet.inference.sources import Sample


@dataclass
class ServeClassifier:
    """Loaded classifier(s), their class names and the heatmap settings."""

    models: list  # [(model, ClassifierConfig)] as inference.classify.load_models returns
    class_names: list[str]
    device: object
    cam_classes: CamClasses
    explainer: CamExplainer

    @property
    def columns(self) -> list[str]:
        return [classifier_column(n) for n in self.class_names]

    def outputs(self, samples: Sequence[Sample]) -> list[dict]:
        """Per sample: ``{"probabilities": [C], "heatmaps": {class index: [h, w] array}}``."""
        from cxrdet.classifier.predict import ensemble_probabilities

        images = [s.image for s in samples]
        probs = ensemble_probabilities(self.models, images, self.device)
        chosen = [self.cam_classes.choose(p, self.class_names) for p in probs]
        maps = self.explainer.explain(images, chosen)
        return [{"probabilities": p, "heatmaps": dict(zip(c, m))} for p, c, m in zip(probs, chosen, maps)]


class ClassifiedPredictor:
    """``predict(samples)`` as :class:`Predictor`'s, the classifier first (its output in ``.classifier``)."""

    def __init__(self, predictor: Predictor, classifier: ServeClassifier) -> None:
        self.predictor = predictor
        self.classifier = classifier

    def predict(self, samples: Sequence[Sample]) -> BatchResult:
        samples = list(samples)
        try:
            outputs = self.classifier.outputs(samples)
        except Exception as e:  # e.g. out of memory: every image of the batch is listed
            out = BatchResult()
            out.fail_all(samples, "the classifier failed on its batch", e)
            return out
        by_sample = {id(s): o for s, o in zip(samples, outputs)}
        columns = self.classifier.columns
        # image ids may repeat within a batch (two uploads of one name): the same file, the same values
        probs = {s.image_id: dict(zip(columns, map(float, o["probabilities"]))) for s, o in zip(samples, outputs)}
        batch = self.predictor.predict(samples, probs)
        for r in batch.results:
            r.classifier = by_sample[id(r.sample)]
        return batch


def classifier_block(output: dict | None, class_names: list[str], request_id: str) -> dict | None:
    """The answer's ``classifier`` field: every class's probability, and the heatmaps' URLs."""
    if output is None:
        return None
    p = np.asarray(output["probabilities"], dtype=np.float64)
    return {"classes": [{"class_index": k, "class_name": n, "probability": float(p[k])} for k, n in enumerate(class_names)],
            "heatmaps": [{"class_index": int(k), "class_name": class_names[k], "probability": float(p[k]),
                          "url": f"/v1/results/{request_id}/heatmap/{int(k)}.png"} for k in output["heatmaps"]]}
