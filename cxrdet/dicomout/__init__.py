"""Results as DICOM: Comprehensive SR (TID 1500) per image, and a C-STORE node that runs cxrdet.

Modules: ``codes`` (the one table of coded concepts the SR uses), ``sr`` (build an SR from a
source image's header and its detections; read one back), ``infer_command`` (``cxrdet infer``
with ``--sr-dir``), ``node`` (inbox, queue and worker of ``cxrdet listen``) and ``listen`` (the
``cxrdet listen`` command: pynetdicom storage SCP + SCU forward).

This package sits at the top of the import order, beside the other commands: it may import
inference, gate, detector, preprocess, dicomio, formats and the core, never the other way round.
"""
