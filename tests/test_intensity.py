"""Golden values for the pure intensity maths (DICOM PS3.3 C.11)."""

import numpy as np
import pytest

from cxrdet.dicomio import intensity as I


def test_rescale_applies_slope_then_intercept():
    out = I.rescale(np.array([0, 10, 4095], dtype=np.uint16), 2.0, -1024.0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [-1024.0, -1004.0, 7166.0])


def test_linear_window_matches_the_standard_formula():
    # c=2000, w=1001: y = (x - 1999.5) / 1000 + 0.5, clipped to [0, 1]
    x = np.array([0.0, 1499.5, 1999.5, 2249.5, 2499.5, 9999.0])
    np.testing.assert_allclose(I.window(x, 2000, 1001), [0, 0, 0.5, 0.75, 1, 1], atol=1e-6)


def test_linear_exact_and_sigmoid_windows():
    x = np.array([1500.0, 2000.0, 2250.0, 2500.0])
    np.testing.assert_allclose(I.window(x, 2000, 1000, "LINEAR_EXACT"), [0, 0.5, 0.75, 1], atol=1e-6)
    sig = I.window(x, 2000, 1000, "SIGMOID")
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-4 * (x - 2000) / 1000)), rtol=1e-6)


def test_window_width_one_is_a_threshold_and_below_one_is_rejected():
    np.testing.assert_array_equal(I.window(np.array([99.0, 99.6, 101.0]), 100, 1), [0, 1, 1])
    with pytest.raises(ValueError):
        I.window(np.array([1.0]), 100, 0.5)


def test_voi_lut_clips_below_first_and_past_last_entry():
    lut = np.array([10, 20, 30, 40])  # output range 10..40 -> [0, 1]
    out = I.voi_lut(np.array([-100, 100, 101, 102, 103, 9999]), lut, first_mapped=100)
    np.testing.assert_allclose(out, [0, 0, 1 / 3, 2 / 3, 1, 1], atol=1e-6)


def test_voi_lut_long_8bit_table_does_not_wrap():
    # pydicom 3.0.2's apply_voi indexes 8-bit tables with uint8 and wraps inputs > 255
    lut = np.arange(4096) // 16  # 8-bit entries, 4096 of them
    out = I.voi_lut(np.array([0, 256, 4095]), lut, first_mapped=0)
    np.testing.assert_allclose(out, [0, 16 / 255, 1], atol=1e-6)


def test_voi_lut_negative_first_mapped():
    out = I.voi_lut(np.array([-2048, -2047, 0]), np.arange(4096), first_mapped=-2048)
    np.testing.assert_allclose(out, [0, 1 / 4095, 2048 / 4095], atol=1e-7)


def test_minmax_and_flat_image():
    np.testing.assert_allclose(I.minmax(np.array([100, 150, 200])), [0, 0.5, 1])
    np.testing.assert_array_equal(I.minmax(np.full((3, 3), 7)), np.zeros((3, 3)))


def test_invert_and_to_uint8_rounding():
    np.testing.assert_allclose(I.invert(np.array([0.0, 0.25, 1.0])), [1.0, 0.75, 0.0])
    u8 = I.to_uint8(np.array([-0.5, 0.0, 0.5 / 255, 0.5, 1.0, 2.0]))
    np.testing.assert_array_equal(u8, [0, 0, 0, 128, 255, 255])  # rint: half to even (0.5 -> 0)
    assert u8.dtype == np.uint8
