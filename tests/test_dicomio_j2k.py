"""Lossless JPEG 2000 / RLE give exactly their uncompressed twin; the reduced-level JPEG 2000
decode stays within a tested tolerance of the full decode."""

import numpy as np
import openjpeg
import pytest
from dicom_fixtures import phantom
from openjpeg.utils import encode_array

from cxrdet.boxes import resized_hw
from cxrdet.dicomio import j2k
from cxrdet.dicomio.read import j2k_reduce_level, read_dicom
from cxrdet.dicomio.write import write_dicom
from cxrdet.preprocess.cache import CacheSettings
from cxrdet.preprocess.pipeline import preprocess_file

WINDOW = dict(bits_stored=14, window_center=8000, window_width=12000)


@pytest.mark.parametrize("ts", ["jpeg2000", "rle"])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_lossless_file_caches_exactly_like_its_uncompressed_twin(tmp_path, ts, photometric):
    stored = phantom(96, 80, 14, seed=5)
    plain = write_dicom(tmp_path / "plain.dicom", stored, photometric=photometric, **WINDOW)
    packed = write_dicom(tmp_path / "packed.dicom", stored, photometric=photometric,
                         transfer_syntax=ts, **WINDOW)
    for settings in (CacheSettings(size=64), CacheSettings(size=64, voi="minmax"),
                     CacheSettings(size=64, j2k_reduce=False)):
        a, b = preprocess_file(plain, settings), preprocess_file(packed, settings)
        assert a.image.shape == resized_hw(stored.shape, 64)
        np.testing.assert_array_equal(a.image, b.image)
        assert a.features == b.features


def test_reduce_level_rule():
    assert j2k_reduce_level((2430, 1994), 1024) == 0  # 1215 < 1.4 * 1024
    assert j2k_reduce_level((3072, 3072), 1024) == 1  # 1536 >= 1434
    assert j2k_reduce_level((2430, 1994), 512) == 1  # 1215 >= 717 > 608
    assert j2k_reduce_level((3072, 3072), 256) == 3  # 384 >= 359 > 192
    assert j2k_reduce_level((100, 80), 256) == 0


def test_ctypes_decoder_matches_openjpeg_and_reduces_by_powers_of_two():
    stored = phantom(75, 66, 12, seed=2)
    codestream = encode_array(stored, bits_stored=12)
    np.testing.assert_array_equal(j2k.decode(codestream, 0), openjpeg.decode(codestream))
    assert j2k.decode(codestream, 1).shape == (38, 33)  # ceil(75/2), ceil(66/2)
    with pytest.raises(RuntimeError):
        j2k.decode(b"\x00" * 64)


@pytest.mark.skipif(not j2k.available(), reason="OpenJPEG C API not exported by pylibjpeg-openjpeg")
def test_reduced_decode_stays_within_tolerance_of_full_decode(tmp_path):
    # 14-bit, realistic noise; size 240 -> level 1 (360 px = 1.5 x 240), the rule's low end
    stored = phantom(720, 600, 14, seed=7, noise=0.02)
    path = write_dicom(tmp_path / "big.dicom", stored, transfer_syntax="jpeg2000", **WINDOW)
    _, meta = read_dicom(path, reduce_to=240)
    assert meta["decoded_hw"] == (360, 300)
    fast = preprocess_file(path, CacheSettings(size=240))
    exact = preprocess_file(path, CacheSettings(size=240, j2k_reduce=False))
    assert fast.image.shape == exact.image.shape == (240, 200) and fast.orig_hw == (720, 600)
    diff = np.abs(fast.image.astype(int) - exact.image.astype(int))
    # measured 1.33 / 5 / 14: about one grey level on average, edges a little sharper
    assert diff.mean() <= 1.6 and np.percentile(diff, 99) <= 6 and diff.max() <= 20, diff.max()


@pytest.mark.skipif(not j2k.available(), reason="OpenJPEG C API not exported by pylibjpeg-openjpeg")
def test_exact_j2k_equals_the_uncompressed_twin_where_reduction_would_apply(tmp_path):
    # 720 px at size 240: the default decodes at level 1 (360 px); --exact-j2k never reduces
    stored = phantom(720, 600, 14, seed=11, noise=0.02)
    kw = dict(photometric="MONOCHROME1", **WINDOW)
    plain = write_dicom(tmp_path / "plain.dicom", stored, **kw)
    packed = write_dicom(tmp_path / "packed.dicom", stored, transfer_syntax="jpeg2000", **kw)
    assert read_dicom(packed, reduce_to=240)[1]["decoded_hw"] == (360, 300)  # would reduce
    twin = preprocess_file(plain, CacheSettings(size=240)).image  # uncompressed: never reduced
    exact = preprocess_file(packed, CacheSettings(size=240, j2k_reduce=False))
    np.testing.assert_array_equal(exact.image, twin)
    fast = preprocess_file(packed, CacheSettings(size=240)).image
    diff = np.abs(fast.astype(int) - twin.astype(int))
    assert diff.max() > 0  # the reduced path was really taken
    # measured 1.33 / 5 / 13; the same tolerance as the reduced-vs-full test above
    assert diff.mean() <= 1.6 and np.percentile(diff, 99) <= 6 and diff.max() <= 20, diff.max()


def test_minmax_files_are_never_decoded_reduced(tmp_path):
    path = write_dicom(tmp_path / "mm.dicom", phantom(400, 320, 12), transfer_syntax="jpeg2000")
    assert read_dicom(path, reduce_to=64)[1]["decoded_hw"] == (400, 320)  # no window: min-max


def test_signed_j2k_reduced_decode_keeps_the_sign(tmp_path):
    stored = phantom(240, 200, 14, seed=4, signed=True)
    path = write_dicom(tmp_path / "s.dicom", stored, transfer_syntax="jpeg2000", bits_stored=14,
                       window_center=0, window_width=12000)
    fast, meta = read_dicom(path, reduce_to=80)
    exact, _ = read_dicom(path)
    assert meta["decoded_hw"] == (120, 100)  # reduced path taken, not the pydicom fallback
    assert abs(float(fast.mean()) - float(exact.mean())) < 0.01  # same intensities, sign intact
