"""Unit tests of the inference pieces: box mapping, TTA/WBF fusion, image-level CSV, overlays,
PNG input, shards. Pure numpy/cv2 on tiny arrays; no detector is trained here."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrdet.boxes import resized_hw
from cxrdet.detections import Detections, to_original
from cxrdet.errors import UserError
from cxrdet.formats.image_level import (
    IMAGE_LEVEL_COLUMNS,
    class_max_scores,
    image_level_frame,
    image_level_row,
    read_image_level,
    write_image_level,
)
from cxrdet.inference.overlay import draw_overlay, write_overlay
from cxrdet.inference.sources import (
    PngFolderSource,
    parse_shard,
    png_to_uint8,
    read_png_sizes,
    select_shard,
)
from cxrdet.inference.tta import fuse_runs, predict_fused, run_views, views


def _bright_bbox(image: np.ndarray, thr: int = 128) -> np.ndarray:
    """xyxy (continuous pixels) of the pixels brighter than thr, counting partial pixels.

    Area-resizing blends border pixels; counting each row/column by its mean brightness gives
    the sub-pixel extent of the rectangle.
    """
    frac = image.astype(np.float64) / 255.0
    cols, rows = frac.max(axis=0), frac.max(axis=1)
    x = np.flatnonzero(cols > 0.02)
    y = np.flatnonzero(rows > 0.02)
    x0 = x[0] + (1 - cols[x[0]]) if cols[x[0]] < 0.98 else x[0]
    x1 = x[-1] + cols[x[-1]]
    y0 = y[0] + (1 - rows[y[0]]) if rows[y[0]] < 0.98 else y[0]
    y1 = y[-1] + rows[y[-1]]
    return np.array([[x0, y0, x1, y1]], dtype=np.float64)


def test_known_box_in_non_square_original_maps_back_within_two_pixels():
    orig_hw = (2430, 1994)  # the most common VinBigData size: tall, not square
    size = 512
    truth = np.array([[311.0, 1207.0, 987.0, 1840.0]])  # x0, y0, x1, y1 in original pixels
    original = np.zeros(orig_hw, dtype=np.uint8)
    x0, y0, x1, y1 = truth[0].astype(int)
    original[y0:y1, x0:x1] = 255
    ch, cw = resized_hw(orig_hw, size)
    assert (ch, cw) == (512, 420)  # aspect kept, so x and y scale differently after rounding
    cache = cv2.resize(original, (cw, ch), interpolation=cv2.INTER_AREA)
    found = _bright_bbox(cache)  # what a perfect detector would report in cache pixels
    det = Detections(found, [0.9], [8])
    back = to_original(det, (ch, cw), orig_hw)
    assert np.abs(back.boxes - truth).max() <= 2.0


def test_to_original_scales_anisotropically_clips_and_drops_degenerate():
    det = Detections(
        [[10, 20, 30, 40], [-5, -5, 500, 600], [100, 50, 100.001, 60]],
        [0.9, 0.8, 0.7],
        [0, 3, 8],
    )
    out = to_original(det, cache_hw=(100, 200), orig_hw=(1000, 1000))
    # x scaled by 5, y by 10; the second box clipped to the image; the sliver dropped
    np.testing.assert_allclose(out.boxes, [[50, 200, 150, 400], [0, 0, 1000, 1000]])
    np.testing.assert_array_equal(out.class_ids, [0, 3])


def test_fuse_single_run_is_identity_and_identical_runs_keep_box_and_score():
    det = Detections([[10, 10, 50, 60], [70, 5, 90, 40]], [0.9, 0.4], [2, 5])
    assert fuse_runs([det], (100, 100)) is det
    fused = fuse_runs([det, det], (100, 100))
    order = np.argsort(fused.class_ids)
    np.testing.assert_allclose(fused.boxes[order], det.boxes, atol=1e-9)
    np.testing.assert_allclose(fused.scores[order], det.scores, atol=1e-9)


def test_fuse_down_weights_a_box_only_one_run_saw():
    a = Detections([[10, 10, 50, 60]], [0.8], [1])
    fused = fuse_runs([a, Detections.empty()], (100, 100))
    np.testing.assert_allclose(fused.scores, [0.4])  # WBF 'avg': 0.8 * 1 box / 2 runs


def _bright_spot_detector(images):
    """A stand-in detector: one box around each image's bright square, score 0.9, class 4."""
    out = []
    for im in images:
        ys, xs = np.nonzero(im > 128)
        out.append(Detections([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], [0.9], [4]))
    return out


def test_hflip_views_are_flipped_back_before_fusion():
    im = np.zeros((40, 64), dtype=np.uint8)
    im[5:15, 3:13] = 255  # off-centre, so a missed un-flip would land elsewhere
    assert views("hflip") == (False, True)
    runs = run_views([_bright_spot_detector], [im], "hflip")[0]
    assert len(runs) == 2
    np.testing.assert_allclose(runs[1].boxes, runs[0].boxes)
    fused = predict_fused([_bright_spot_detector, _bright_spot_detector], [im], "hflip")[0]
    np.testing.assert_allclose(fused.boxes, [[3, 5, 13, 15]])
    np.testing.assert_allclose(fused.scores, [0.9])
    with pytest.raises(ValueError):
        views("vflip")


def test_image_level_rows_are_per_class_maxima(tmp_path):
    det = Detections([[0, 0, 5, 5]] * 4, [0.2, 0.7, 0.5, 1.0], [3, 3, 0, 14])
    expected = np.zeros(14)
    expected[3], expected[0] = 0.7, 0.5  # class 14 is not a finding column
    np.testing.assert_allclose(class_max_scores(det), expected)
    rows = [image_level_row("b", det, 0.25), image_level_row("a", Detections.empty(), None)]
    frame = image_level_frame(rows)
    assert list(frame.columns) == IMAGE_LEVEL_COLUMNS
    assert frame["image_id"].tolist() == ["a", "b"]
    path = write_image_level(tmp_path / "il.csv", frame)
    back = read_image_level(path)
    assert np.isnan(back.loc[0, "p_abnormal"]) and back.loc[1, "p_abnormal"] == 0.25
    assert back.loc[1, "p_3"] == pytest.approx(0.7)


def test_image_level_reader_names_the_bad_line(tmp_path):
    frame = image_level_frame([image_level_row(i, Detections.empty(), 0.5) for i in "ab"])
    frame.loc[1, "p_2"] = 1.5
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UserError, match="line 3"):
        read_image_level(tmp_path / "bad.csv")


def test_overlay_draws_class_coloured_boxes_and_refuses_escaping_ids(tmp_path):
    image = np.full((800, 640), 90, dtype=np.uint8)
    det = Detections([[100, 200, 700, 900], [0, 0, 1, 1]], [0.9, 0.3], [3, 14])
    picture = draw_overlay(image, det, orig_hw=(1000, 800))
    assert picture.shape == (800, 640, 3)
    changed = np.any(picture != 90, axis=2)
    # the box's left edge at cache x = 100 * 640 / 800 = 80 is drawn, the image centre left alone
    assert changed[200:700, 80].mean() > 0.9
    assert not changed[400, 320]
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 3  # colours, not just grey
    small = draw_overlay(image[::4, ::4], det, orig_hw=(1000, 800))
    assert max(small.shape[:2]) == 768  # small caches are enlarged so labels stay legible
    path = write_overlay(tmp_path / "vis", "img1", image, det, (1000, 800))
    assert path.name == "img1.png" and cv2.imread(str(path)).shape == (800, 640, 3)
    for bad in ("../escape", "a/b", ".."):
        with pytest.raises(UserError):
            write_overlay(tmp_path / "vis", bad, image, det, (1000, 800))
    assert not (tmp_path / "escape.png").exists()


def test_png_to_uint8_handles_8_and_16_bit_grey_and_colour():
    g8 = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert png_to_uint8(g8) is g8
    g16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000 + 500)
    out = png_to_uint8(g16)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    bgr = np.dstack([g8, g8, g8])
    np.testing.assert_array_equal(png_to_uint8(bgr), g8)


def test_png_source_resizes_to_the_cache_size_of_the_original(tmp_path):
    png_dir = tmp_path / "png"
    png_dir.mkdir()
    square = np.zeros((256, 256), dtype=np.uint16)  # a squashed release image, 16-bit
    square[64:128, 32:96] = 60000
    cv2.imwrite(str(png_dir / "tall.png"), square)
    cv2.imwrite(str(png_dir / "nosize.png"), np.zeros((8, 8), np.uint8))
    (png_dir / "broken.png").write_bytes(b"not a png")
    sizes = tmp_path / "sizes.csv"
    (png_dir / "broken_unsized.png").write_bytes(b"not a png either")
    pd.DataFrame({"image_id": ["tall", "broken", "ghost"], "dim0": [2000, 900, 700],
                  "dim1": [1000, 800, 600]}).to_csv(sizes, index=False)
    src = PngFolderSource(png_dir, sizes, size=128, with_features=False)
    assert src.ids == ["broken", "broken_unsized", "ghost", "nosize", "tall"]  # PNGs and size rows
    by_id = {s.image_id: s for s in (src[i] for i in range(len(src)))}
    tall = by_id["tall"]
    assert tall.error is None and tall.orig_hw == (2000, 1000)
    assert tall.image.shape == (128, 64) and tall.image.dtype == np.uint8
    # rows 64:128 -> 32:64 (x0.5), columns 32:96 -> 8:24 (x0.25)
    assert tall.image[40, 16] == 255 and tall.image[40, 30] == 0 and tall.image[100, 16] == 0
    assert by_id["nosize"].error.startswith("no row for this image in ") and "sizes.csv" in by_id["nosize"].error
    assert by_id["broken"].error.endswith("broken.png is not a readable PNG") and by_id["broken"].image is None
    assert by_id["broken_unsized"].error.endswith("broken_unsized.png is not a readable PNG")  # unreadable first
    assert by_id["ghost"].error.startswith("listed in ") and by_id["ghost"].error.endswith("ghost.png")


@pytest.mark.parametrize(
    "body, match",
    [
        ("image_id,rows,cols\na,1,2\n", "expected columns image_id,dim0,dim1 (dim0 = rows = original height, "
                                       "dim1 = columns = original width), missing dim0,dim1"),
        ("image_id,dim0,dim1\na,10,20\nb,0,5\n", "line 3: dim0/dim1 must be positive integers, got 0,5"),
        ("image_id,dim0,dim1\na,10,20\na,10,20\n", "line 3: image_id 'a' appears twice"),
    ],
)
def test_png_sizes_csv_errors_name_the_problem(tmp_path, body, match):
    path = tmp_path / "sizes.csv"
    path.write_text(body)
    with pytest.raises(UserError) as e:
        read_png_sizes(path)
    assert str(e.value).startswith(f"PNG sizes CSV {path}") and match in str(e.value)
    assert "--" not in str(e.value)  # a library message: the file and the expectation, no CLI flag


def test_png_folder_errors_name_the_folder(tmp_path):
    from cxrdet.inference.sources import PngFolderSource

    with pytest.raises(UserError, match=f"^PNG folder {tmp_path / 'absent'} is not a folder$"):
        PngFolderSource(tmp_path / "absent", tmp_path / "sizes.csv", 64)
    with pytest.raises(UserError, match=r"holds no \.png files \(expected <image_id>\.png\)$"):
        PngFolderSource(tmp_path, tmp_path / "sizes.csv", 64)


def test_shards_are_disjoint_complete_and_order_independent():
    ids = [f"id{i:03d}" for i in range(11)]
    shards = [select_shard(ids, i, 3) for i in range(3)]
    assert sorted(sum(shards, [])) == ids
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert select_shard(list(reversed(ids)), 1, 3) == shards[1]
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(UserError):
            parse_shard(bad)


def test_failure_reasons_are_plain_text():
    from cxrdet.errors import InputFailure, failure_reason

    assert failure_reason(KeyError("no row for this image")) == "KeyError: no row for this image"  # no repr quotes
    assert failure_reason(InputFailure("x.png is not a readable PNG")) == "x.png is not a readable PNG"
    assert failure_reason(UserError("bad file")) == "bad file"
    assert failure_reason(RuntimeError()) == "RuntimeError"


def test_keep_confident_drops_low_findings_and_keeps_every_gate_row():
    from cxrdet.inference.infer import keep_confident

    dets = Detections(np.array([[0, 0, 5, 5], [1, 1, 6, 6], [0, 0, 1, 1], [2, 2, 9, 9]], float),
                      np.array([0.9, 0.3, 0.2, 0.5]), np.array([3, 0, 14, 7]))
    kept = keep_confident(dets, 0.5)
    assert kept.class_ids.tolist() == [3, 14, 7] and kept.scores.tolist() == [0.9, 0.2, 0.5]  # >= conf kept
    assert keep_confident(dets, None) is dets  # default: keep all
    assert len(keep_confident(dets, 0.0)) == 4 and keep_confident(dets, 1.0).class_ids.tolist() == [14]
