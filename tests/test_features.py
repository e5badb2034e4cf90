"""Golden values of the gate's pixel features on tiny hand-made uint8 images."""

import math

import numpy as np
import pytest

from cxrdet.preprocess.features import FEATURE_SIZE, PERCENTILES, pixel_features

N = FEATURE_SIZE  # images at the feature size are used as they are (no resampling)


def _halves(left: int, right: int, size: int = N) -> np.ndarray:
    image = np.full((size, size), left, np.uint8)
    image[:, size // 2:] = right
    return image


def test_constant_image_has_no_spread_no_entropy_no_edges():
    f = pixel_features(np.full((N, N), 100, np.uint8))
    for p in PERCENTILES:
        assert f[f"px_p{p:02d}"] == pytest.approx(100 / 255)
    assert f["px_mean"] == pytest.approx(100 / 255)
    zero = ["px_std", "px_skew", "px_kurtosis", "px_entropy", "px_edge_density", "px_grad_mean",
            "px_grad_std", "px_laplacian_var", "px_lr_absdiff", "px_lr_mean_diff",
            "px_tb_mean_diff", "px_centre_border_diff", "px_lower_lr_diff", "px_dark_frac",
            "px_bright_frac"]
    assert {k: f[k] for k in zero} == {k: 0.0 for k in zero}
    assert f["px_aspect"] == 1.0


def test_black_left_white_right_image():
    f = pixel_features(_halves(0, 255))
    assert [f[f"px_p{p:02d}"] for p in PERCENTILES] == [0, 0, 0, 0, 0.5, 1, 1, 1, 1]
    assert (f["px_mean"], f["px_std"], f["px_skew"], f["px_kurtosis"]) == (0.5, 0.5, 0.0, -2.0)
    assert f["px_entropy"] == 1.0  # two equally likely grey levels: one bit
    assert f["px_dark_frac"] == f["px_bright_frac"] == 0.5
    assert f["px_edge_density"] == 1 / N  # Canny marks one column, every row
    assert f["px_grad_mean"] == 2 * 4 / N  # Sobel 4 on the two columns beside the step
    assert f["px_laplacian_var"] == pytest.approx(2 / N)  # +1 and -1 on those two columns
    assert f["px_grad_xy_ratio"] > 1e3  # all gradient is horizontal
    assert (f["px_lr_absdiff"], f["px_lr_mean_diff"], f["px_lower_lr_diff"]) == (1.0, -1.0, -1.0)
    assert f["px_tb_mean_diff"] == 0.0 and f["px_centre_border_diff"] == 0.0


def test_bright_top_and_bright_centre_layouts():
    top = np.zeros((N, N), np.uint8)
    top[: N // 2] = 255
    f = pixel_features(top)
    assert (f["px_tb_mean_diff"], f["px_lr_mean_diff"], f["px_lr_absdiff"]) == (1.0, 0.0, 0.0)
    centre = np.zeros((N, N), np.uint8)
    centre[N // 4: N - N // 4, N // 4: N - N // 4] = 255  # the features' centre region
    assert pixel_features(centre)["px_centre_border_diff"] == 1.0


@pytest.mark.parametrize("levels", [4, 16, 256])
def test_entropy_of_equally_frequent_levels_is_log2_of_their_count(levels):
    values = (np.arange(N) * levels // N * (255 // (levels - 1))).astype(np.uint8)
    f = pixel_features(np.tile(values, (N, 1)))  # each level fills N / levels columns
    assert f["px_entropy"] == pytest.approx(math.log2(levels))


def test_features_do_not_depend_on_the_cache_size_or_shape_checks():
    assert pixel_features(_halves(0, 255, 2 * N)) == pixel_features(_halves(0, 255))
    assert pixel_features(np.zeros((N // 2, N), np.uint8))["px_aspect"] == 2.0
    for bad in (np.zeros((8, 8), np.float32), np.zeros((8, 8, 3), np.uint8), np.zeros((0, 8), np.uint8)):
        with pytest.raises(ValueError, match="uint8"):
            pixel_features(bad)
