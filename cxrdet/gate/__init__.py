"""The normal/abnormal gate (low/high thresholds: see cxrdet/gate/rules.py): P(abnormal) per image from metadata, pixel
statistics and, optionally, the detector's own out-of-fold evidence.

- :mod:`cxrdet.gate.features`: ``build_features(meta_df, pixel_df, detections)`` (training and
  inference share it) and ``FeatureSchema``.
- :mod:`cxrdet.gate.model`: ``GateClassifier`` (XGBoost, scikit-learn style, UBJSON + JSON schema).
- :mod:`cxrdet.gate.train`: the ``cxrdet train-gate`` command.
- :mod:`cxrdet.gate.report`: ``report.json`` and the report picture.

Inference: ``GateClassifier.load(dir).p_abnormal(build_features(meta, px, dets))`` then
``cxrdet.gate.rules.apply_gate`` with the saved ``low_`` / ``high_``.
"""
