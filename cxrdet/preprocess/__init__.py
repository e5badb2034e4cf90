"""DICOM folder -> HDF5 cache + META.csv + pixel-feature CSV.

``cache`` (settings, atomic/resumable writer, per-process reader), ``pipeline`` (the one
file -> cached image path, shared with inference), ``features`` (gate features), ``prepare``
and ``merge`` (the commands).
"""
