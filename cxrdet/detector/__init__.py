"""Faster R-CNN detector: config, model builder, transforms, data, LightningModule, training, export.

Public entry points: :func:`cxrdet.detector.export.load_detector` and
:func:`cxrdet.detector.predict.predict` (inference), ``cxrdet train`` (training).
"""
