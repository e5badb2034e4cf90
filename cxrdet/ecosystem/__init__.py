"""Interop with the rest of the detection ecosystem (top layer, beside the commands).

* :mod:`~cxrdet.ecosystem.export_labels`: ``cxrdet export-labels``, the detector's fused training
  boxes and fold split as COCO JSON or the YOLO layout (ultralytics, MMDetection, detectron2).
* :mod:`~cxrdet.ecosystem.fuse`: ``cxrdet fuse``, submissions of any framework fused with
  ensemble-boxes (class-14 rule in :mod:`~cxrdet.ecosystem.submission_fusion`).
* :mod:`~cxrdet.ecosystem.onnx_export` / :mod:`~cxrdet.ecosystem.onnx_runtime`: the detector as an
  ONNX file and its onnxruntime predictor (``cxrdet export-onnx``, ``cxrdet infer --runtime onnx``).

See docs/ecosystem.md.
"""
