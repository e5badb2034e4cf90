"""cxrdet: VinBigData / VinDr-CXR thoracic finding detection.

Box convention for the whole package (fixed here, once): boxes are float arrays of shape
[N, 4] in ``xyxy`` order, ``(x_min, y_min, x_max, y_max)``, in *pixel* units of the image they
refer to, x along columns and y along rows. Which image that is is always named: "original"
means DICOM Rows x Columns, "cache" means the resized HDF5 image. Conversion between the two
lives in :mod:`cxrdet.boxes` and nowhere else.
"""

__version__ = "0.1.0"
