"""DICOM in and out: realistic writer, metadata reader, pixel reader, pure intensity maths.

``write`` makes CR/DX files (synthetic data, tests), ``meta`` reads tags without pixels,
``read`` turns one file into a display image in ``[0, 1]``, ``intensity`` holds the numpy maths
(rescale, VOI LUT, window, min-max, invert) that ``read`` applies.
"""
