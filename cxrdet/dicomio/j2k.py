"""JPEG 2000 decoding at a reduced resolution level, through OpenJPEG's C API.

pylibjpeg-openjpeg (a required dependency, pydicom's JPEG 2000 decoder) bundles OpenJPEG and
exports its C API, but its Python functions always decode the full image on one thread. A
chest X-ray cached at 1024 px rarely needs its 2-3k px original: OpenJPEG can stop the inverse
wavelet transform ``reduce`` levels early (each level halves both sides); this module calls
that option via ``ctypes``. (OpenJPEG's multi-threaded decode is compiled out of the bundled
library, ``opj_has_thread_support() == 0``, so it is not offered.) When the library or a
symbol cannot be found, ``available()`` is False and callers use the full pydicom decode.
"""

from __future__ import annotations

import ctypes
import importlib.util
from ctypes import POINTER, c_bool, c_char_p, c_int, c_int32, c_int64, c_size_t, c_uint32, c_void_p
from functools import lru_cache
from pathlib import Path

import numpy as np

_READ = ctypes.CFUNCTYPE(c_size_t, c_void_p, c_size_t, c_void_p)
_SKIP = ctypes.CFUNCTYPE(c_int64, c_int64, c_void_p)
_SEEK = ctypes.CFUNCTYPE(c_bool, c_int64, c_void_p)
_CODEC_J2K = 0  # raw codestream, what DICOM encapsulates
_DPARAMS_BYTES = 1 << 16  # > sizeof(opj_dparameters_t) (~8.3 kB); only cp_reduce (offset 0) is set


class _Comp(ctypes.Structure):
    _fields_ = [("dx", c_uint32), ("dy", c_uint32), ("w", c_uint32), ("h", c_uint32),
                ("x0", c_uint32), ("y0", c_uint32), ("prec", c_uint32), ("bpp", c_uint32),
                ("sgnd", c_uint32), ("resno_decoded", c_uint32), ("factor", c_uint32),
                ("data", POINTER(c_int32)), ("alpha", ctypes.c_uint16)]


class _Image(ctypes.Structure):
    _fields_ = [("x0", c_uint32), ("y0", c_uint32), ("x1", c_uint32), ("y1", c_uint32),
                ("numcomps", c_uint32), ("color_space", c_int), ("comps", POINTER(_Comp)),
                ("icc_profile_buf", c_void_p), ("icc_profile_len", c_uint32)]


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL | None:
    spec = importlib.util.find_spec("_openjpeg")
    if spec is None or spec.origin is None:
        return None
    try:
        lib = ctypes.CDLL(str(Path(spec.origin)))
        sigs = {
            "opj_version": (c_char_p, []),
            "opj_create_decompress": (c_void_p, [c_int]),
            "opj_set_default_decoder_parameters": (None, [c_void_p]),
            "opj_setup_decoder": (c_bool, [c_void_p, c_void_p]),
            "opj_stream_create": (c_void_p, [c_size_t, c_bool]),
            "opj_stream_set_read_function": (None, [c_void_p, _READ]),
            "opj_stream_set_skip_function": (None, [c_void_p, _SKIP]),
            "opj_stream_set_seek_function": (None, [c_void_p, _SEEK]),
            "opj_stream_set_user_data_length": (None, [c_void_p, ctypes.c_uint64]),
            "opj_read_header": (c_bool, [c_void_p, c_void_p, POINTER(POINTER(_Image))]),
            "opj_decode": (c_bool, [c_void_p, c_void_p, POINTER(_Image)]),
            "opj_end_decompress": (c_bool, [c_void_p, c_void_p]),
            "opj_image_destroy": (None, [POINTER(_Image)]),
            "opj_stream_destroy": (None, [c_void_p]),
            "opj_destroy_codec": (None, [c_void_p]),
        }
        for name, (res, args) in sigs.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        if not lib.opj_version().decode().startswith("2."):
            return None
    except (OSError, AttributeError):
        return None
    return lib


def available() -> bool:
    """True when OpenJPEG's C API could be loaded from pylibjpeg-openjpeg."""
    return _lib() is not None


def decode(codestream: bytes, reduce: int = 0) -> np.ndarray:
    """Decode a J2K codestream, discarding ``reduce`` resolution levels.

    Returns the first component as an int32 ``[ceil(h / 2**reduce), ceil(w / 2**reduce)]``
    array. Raises RuntimeError when OpenJPEG rejects the data.
    """
    return decode_with_info(codestream, reduce)[0]


def decode_with_info(codestream: bytes, reduce: int = 0) -> tuple[np.ndarray, int, bool]:
    """``decode`` plus the codestream's component precision (bits) and signedness."""
    lib = _lib()
    if lib is None:
        raise RuntimeError("OpenJPEG C API not available")
    codec = lib.opj_create_decompress(_CODEC_J2K)
    stream, _keep_alive = _memory_stream(lib, bytes(codestream))
    image = POINTER(_Image)()
    try:
        params = ctypes.create_string_buffer(_DPARAMS_BYTES)
        lib.opj_set_default_decoder_parameters(params)
        c_uint32.from_buffer(params, 0).value = int(reduce)  # opj_dparameters_t.cp_reduce
        if not lib.opj_setup_decoder(codec, params):
            raise RuntimeError("OpenJPEG refused the decoder parameters")
        if not lib.opj_read_header(stream, codec, ctypes.byref(image)):
            raise RuntimeError("not a JPEG 2000 codestream (header unreadable)")
        if not (lib.opj_decode(codec, stream, image) and lib.opj_end_decompress(codec, stream)):
            raise RuntimeError("JPEG 2000 data is corrupt or truncated")
        comp = image.contents.comps[0]
        out = np.ctypeslib.as_array(comp.data, shape=(comp.h, comp.w)).copy()
        precision, signed = int(comp.prec), bool(comp.sgnd)
    finally:
        if image:
            lib.opj_image_destroy(image)
        lib.opj_stream_destroy(stream)
        lib.opj_destroy_codec(codec)
    return out, precision, signed


def _memory_stream(lib: ctypes.CDLL, data: bytes) -> tuple[int, tuple]:
    """An OpenJPEG input stream over ``data``; keep the returned callbacks alive while in use."""
    pos = [0]

    @_READ
    def read(buf, n, _user):
        chunk = data[pos[0]:pos[0] + n]
        if not chunk:
            return c_size_t(-1).value  # OpenJPEG's end-of-stream marker
        ctypes.memmove(buf, chunk, len(chunk))
        pos[0] += len(chunk)
        return len(chunk)

    @_SKIP
    def skip(n, _user):
        n = max(-pos[0], min(n, len(data) - pos[0]))
        pos[0] += n
        return n

    @_SEEK
    def seek(offset, _user):
        if not 0 <= offset <= len(data):
            return False
        pos[0] = offset
        return True

    stream = lib.opj_stream_create(1 << 20, True)
    lib.opj_stream_set_read_function(stream, read)
    lib.opj_stream_set_skip_function(stream, skip)
    lib.opj_stream_set_seek_function(stream, seek)
    lib.opj_stream_set_user_data_length(stream, len(data))
    return stream, (read, skip, seek)
