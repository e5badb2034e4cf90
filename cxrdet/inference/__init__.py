"""Batch inference: inputs -> detector(s) -> original DICOM pixels -> gate -> submission.

Modules: ``sources`` (DICOM folder, HDF5 cache, PNG folder as Datasets), ``tta`` (hflip TTA and
checkpoint ensembling with weighted boxes fusion), ``mapping`` (cache -> original pixels),
``image_level`` (per-class probabilities CSV), ``overlay`` (pictures), ``infer`` (the
``cxrdet infer`` command) and ``merge`` (``cxrdet merge-submissions`` for shards).
Importing the package imports nothing heavy; torch is loaded by the modules that need it.
"""
