"""Batch inference: inputs -> detector(s) -> original DICOM pixels -> gate -> submission.

Modules: ``sources`` (DICOM folder, HDF5 cache, PNG folder as Datasets), ``tta`` (hflip TTA and
checkpoint ensembling with weighted boxes fusion), ``overlay`` (pictures), ``infer`` (the
``cxrdet infer`` command) and ``merge`` (``cxrdet merge-submissions`` for shards). Boxes go from
cache to original pixels through :func:`cxrdet.detections.to_original`, the function validation
uses too.
Importing the package imports nothing heavy; torch is loaded by the modules that need it.
"""
