"""cxrdet fuse: golden WBF/NMS cases, self-fusion identity, the class-14 rule, image-set checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrdet.cli import main as cli
from cxrdet.classes import NO_FINDING
from cxrdet.detections import Detections
from cxrdet.ecosystem.submission_fusion import SubmissionFusion, fuse_image, no_finding_score
from cxrdet.formats.submission import read_submission


def write_sub(path: Path, rows: dict[str, str]) -> Path:
    pd.DataFrame({"image_id": list(rows), "PredictionString": list(rows.values())}).to_csv(path, index=False)
    return path


def write_sizes(path: Path, sizes: dict[str, tuple[int, int]]) -> Path:
    pd.DataFrame([(k, h, w) for k, (h, w) in sizes.items()], columns=["image_id", "dim0", "dim1"]).to_csv(path, index=False)
    return path


def fuse(tmp_path: Path, subs: list[Path], sizes: Path, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "fused.csv"
    args = ["fuse"]
    for s in subs:
        args += ["--sub", str(s)]
    code = cli([*args, "--sizes-from", str(sizes), "--out", str(out), *extra])
    return code, out


def rows_of(path: Path) -> dict[str, np.ndarray]:
    frame = read_submission(path)
    return {i: g[["class_id", "score", "x_min", "y_min", "x_max", "y_max"]].to_numpy()
            for i, g in frame.groupby("image_id")}


def test_wbf_golden_two_overlapping_boxes(tmp_path):
    # IoU 0.68 > 0.4: one cluster; WBF box = score-weighted mean, score = mean of the two
    a = write_sub(tmp_path / "a.csv", {"img": "3 0.9 100 100 200 200"})
    b = write_sub(tmp_path / "b.csv", {"img": "3 0.6 110 110 210 210"})
    sizes = write_sizes(tmp_path / "sizes.csv", {"img": (1000, 1000)})
    code, out = fuse(tmp_path, [a, b], sizes, "--method", "wbf", "--iou", "0.4")
    assert code == 0
    np.testing.assert_allclose(rows_of(out)["img"], [[3, 0.75, 104, 104, 204, 204]], atol=2e-3)
    # weights 2 and 1: box (2*0.9*100 + 0.6*110) / 2.4 = 102.5, score (1.8 + 0.6) / 2 * 2 / 3 = 0.8
    code = cli(["fuse", "--sub", str(a), "--weight", "2", "--sub", str(b), "--sizes-from", str(sizes),
                "--out", str(out)])
    assert code == 0
    np.testing.assert_allclose(rows_of(out)["img"], [[3, 0.8, 102.5, 102.5, 202.5, 202.5]], atol=2e-3)


def test_nms_and_soft_nms_golden(tmp_path):
    a = write_sub(tmp_path / "a.csv", {"img": "3 0.9 100 100 200 200 5 0.5 500 500 600 700"})
    b = write_sub(tmp_path / "b.csv", {"img": "3 0.6 110 110 210 210"})
    sizes = write_sizes(tmp_path / "sizes.csv", {"img": (1000, 800)})
    code, out = fuse(tmp_path, [a, b], sizes, "--method", "nms")
    assert code == 0
    # ensemble-boxes rescales scores by w_i / sum(w) = 1/2; the 0.6 box is suppressed (IoU 0.68)
    np.testing.assert_allclose(rows_of(out)["img"], [[3, 0.45, 100, 100, 200, 200], [5, 0.25, 500, 500, 600, 700]],
                               atol=2e-3)
    code, out = fuse(tmp_path, [a, b], sizes, "--method", "soft-nms")
    assert code == 0
    got = rows_of(out)["img"]
    # Gaussian soft-NMS decays the overlapped box to 0.3 * exp(-0.68^2 / 0.5) = 0.12 > 0.001, so it is
    # kept; ensemble-boxes 1.0.9 returns kept boxes with their undecayed (weighted) score, 0.6 / 2
    np.testing.assert_allclose(got, [[3, 0.45, 100, 100, 200, 200], [3, 0.3, 110, 110, 210, 210],
                                     [5, 0.25, 500, 500, 600, 700]], atol=2e-3)


def test_wbf_of_a_submission_with_itself_changes_no_box(tmp_path):
    rng = np.random.default_rng(0)
    rows, sizes = {}, {}
    for k in range(6):
        h, w = int(rng.integers(1500, 3000)), int(rng.integers(1500, 3000))
        sizes[f"id{k}"] = (h, w)
        groups = []
        for j in range(4):  # disjoint boxes in a grid: no two overlap, whatever the class
            x0, y0 = 50 + j * (w // 5), 50 + (j % 2) * (h // 3)
            groups.append(f"{j % 3} {rng.uniform(0.05, 1):.4f} {x0} {y0} {x0 + w // 6:.1f} {y0 + h // 4:.1f}")
        if k % 2:
            groups.append(f"14 {rng.uniform(0.05, 1):.4f} 0 0 1 1")
        rows[f"id{k}"] = " ".join(groups)
    rows["empty"] = ""
    sizes["empty"] = (1000, 1000)
    sub = write_sub(tmp_path / "a.csv", rows)
    code, out = fuse(tmp_path, [sub, sub], write_sizes(tmp_path / "sizes.csv", sizes))
    assert code == 0
    before, after = rows_of(sub), rows_of(out)
    assert set(after) == set(before) - {"empty"} and "empty" in set(pd.read_csv(out)["image_id"])
    for image_id, want in before.items():
        got = after[image_id]
        order_w, order_g = np.lexsort(want.T[::-1]), np.lexsort(got.T[::-1])
        np.testing.assert_allclose(got[order_g], want[order_w], atol=2e-3)


def test_class_14_is_the_weighted_mean_of_the_no_finding_scores():
    box = Detections(np.array([[10.0, 10, 50, 50]]), np.array([0.7]), np.array([2]))
    normal = Detections(np.array([[0.0, 0, 1, 1]]), np.array([0.8]), np.array([NO_FINDING]))
    with_14 = Detections.concat([box, normal])
    assert no_finding_score([with_14, box], [1, 1]) == pytest.approx(0.4)  # absent counts as 0
    assert no_finding_score([with_14, box], [3, 1]) == pytest.approx(0.6)
    fused = fuse_image([with_14, box], [3, 1], (100, 100), SubmissionFusion())
    is14 = fused.class_ids == NO_FINDING
    assert is14.sum() == 1 and fused.scores[is14][0] == pytest.approx(0.6)
    np.testing.assert_array_equal(fused.boxes[is14][0], [0, 0, 1, 1])
    # the finding box is fused from its two copies alone: the 0 0 1 1 box never joins a cluster
    np.testing.assert_allclose(fused.boxes[~is14], [[10, 10, 50, 50]], atol=1e-3)
    assert fused.scores[~is14][0] == pytest.approx(0.7, abs=1e-6)
    # an image no submission calls normal gets no class-14 row; no sizes needed without boxes
    assert not (fuse_image([box, box], [1, 1], (100, 100)).class_ids == NO_FINDING).any()
    only14 = fuse_image([normal, Detections.empty()], [1, 1], None)
    assert only14.class_ids.tolist() == [NO_FINDING] and only14.scores[0] == pytest.approx(0.4)


def test_differing_image_sets_are_refused_unless_missing_says_how(tmp_path, capsys):
    a = write_sub(tmp_path / "a.csv", {"x1": "14 0.8 0 0 1 1", "x2": "0 0.5 10 10 60 60", "x3": ""})
    b = write_sub(tmp_path / "b.csv", {"x2": "0 0.5 10 10 60 60"})
    sizes = write_sizes(tmp_path / "sizes.csv", {k: (100, 100) for k in ("x1", "x2", "x3")})
    code, out = fuse(tmp_path, [a, b], sizes)
    err = capsys.readouterr().err
    assert code == 2 and "b.csv lacks 2 image(s)" in err and "x1, x3" in err and not out.exists()
    code, out = fuse(tmp_path, [a, b], sizes, "--missing", "empty")
    assert code == 0
    got = pd.read_csv(out, keep_default_na=False)
    assert got["image_id"].tolist() == ["x1", "x2", "x3"]  # every image exactly once, first file's order
    assert rows_of(out)["x1"].tolist() == [[14, 0.4, 0, 0, 1, 1]]
    code, out = fuse(tmp_path, [a, b], sizes, "--missing", "normal")
    assert code == 0
    fused = rows_of(out)
    assert fused["x1"].tolist() == [[14, 0.9, 0, 0, 1, 1]]  # (0.8 + 1) / 2
    assert fused["x3"].tolist() == [[14, 0.5, 0, 0, 1, 1]]  # (0 + 1) / 2


def test_sizes_from_meta_csv_and_a_missing_size_named(tmp_path, capsys):
    a = write_sub(tmp_path / "a.csv", {"p": "1 0.5 0 0 3000 2000", "q": "1 0.5 10 10 20 20"})
    meta = tmp_path / "meta.csv"
    pd.DataFrame({"image_id": ["p"], "rows": [1000], "columns": [2000]}).to_csv(meta, index=False)
    code, _ = fuse(tmp_path, [a, a], meta)
    assert code == 2 and "no original size for 1 image(s): q" in capsys.readouterr().err
    pd.DataFrame({"image_id": ["p", "q"], "rows": [1000, 50], "columns": [2000, 50]}).to_csv(meta, index=False)
    code, out = fuse(tmp_path, [a, a], meta)
    assert code == 0
    assert rows_of(out)["p"].tolist() == [[1, 0.5, 0, 0, 2000, 1000]]  # clipped to the original image


def test_weight_must_follow_its_sub(tmp_path):
    a = write_sub(tmp_path / "a.csv", {"img": "3 0.9 100 100 200 200"})
    sizes = write_sizes(tmp_path / "sizes.csv", {"img": (1000, 1000)})
    with pytest.raises(SystemExit) as e:  # argparse: usage error, exit 2
        cli(["fuse", "--weight", "2", "--sub", str(a), "--sizes-from", str(sizes), "--out", str(tmp_path / "o.csv")])
    assert e.value.code == 2
    code, out = fuse(tmp_path, [a], sizes, "--weight", "0")  # applies to the last --sub
    assert code == 2 and not out.exists()
