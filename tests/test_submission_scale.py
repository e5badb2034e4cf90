"""A submission row with 10,000 boxes (a ~250 KB PredictionString, above the csv module's default
131,072-character field limit) is read, scored by ``cxrdet evaluate`` and merged by ``cxrdet
merge-submissions`` exactly; an unbalanced quote after it is an error naming its line.

The scene has a known answer: image ``big`` holds 10 ground-truth boxes of class 0, predicted
exactly at score ranks :data:`TP_RANKS` among 10,000 class-0 boxes whose other 9,990 lie far from
any ground truth; image ``small`` is a "No finding" image predicted as such. VOC all-point AP of
class 0 is then the mean over the 10 true positives of the best precision at or after each
(:func:`all_point_ap`), and class 14 scores AP 1.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from cxrdet.cli import main as cli
from cxrdet.detections import Detections, normal_detection
from cxrdet.errors import UserError
from cxrdet.formats.labels import read_labels
from cxrdet.formats.submission import read_submission, write_submission
from cxrdet.metrics import evaluate_detections

N_BOXES = 10_000
TP_RANKS = [1, 2, 5, 10, 100, 500, 1000, 2000, 5000, 10_000]  # 1-based ranks of the true positives


def all_point_ap(tp_ranks: list[int], n_gt: int) -> float:
    """PASCAL VOC 2010 AP when the i-th true positive (of n_gt, each matched once) has rank r_i."""
    precision = [i / r for i, r in enumerate(tp_ranks, start=1)]
    return sum(max(precision[i:]) for i in range(len(precision))) / n_gt


def big_image_detections(seed: int = 0) -> tuple[Detections, np.ndarray]:
    """10,000 class-0 boxes on one image (scores 1.0, 0.9999, ... 0.0001, exact at 4 decimals),
    and the 10 ground-truth boxes they hit at TP_RANKS."""
    rng = np.random.default_rng(seed)
    gt = np.array([[10 + 90 * i, 10, 90 + 90 * i, 90] for i in range(len(TP_RANKS))], dtype=np.float64)
    x0, y0 = rng.uniform(2000, 2900, N_BOXES), rng.uniform(0, 2900, N_BOXES)  # far from every gt box
    w, h = rng.uniform(10, 100, N_BOXES), rng.uniform(10, 100, N_BOXES)
    boxes = np.round(np.stack([x0, y0, x0 + w, y0 + h], axis=1), 2)
    boxes[np.array(TP_RANKS) - 1] = gt
    scores = (N_BOXES + 1 - np.arange(1, N_BOXES + 1)) / N_BOXES
    return Detections(boxes, scores, np.zeros(N_BOXES, dtype=np.int64)), gt


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("scale")
    dets, gt_boxes = big_image_detections()
    rows = ["image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"]
    rows += [f"big,Aortic enlargement,0,R1,{','.join(f'{v:g}' for v in b)}" for b in gt_boxes]
    rows.append("small,No finding,14,R1,,,,")
    (d / "gt.csv").write_text("\n".join(rows) + "\n")
    predictions = {"big": dets, "small": normal_detection(1.0)}
    write_submission(d / "sub.csv", predictions, ["big", "small"])
    write_submission(d / "shard_big.csv", {"big": dets}, ["big"])
    write_submission(d / "shard_small.csv", {"small": predictions["small"]}, ["small"])
    return {"dir": d, "dets": dets}


def csv_rows(path) -> list[list[str]]:
    csv.field_size_limit(2 ** 31 - 1)  # this test's own reading of the big row
    with open(path, newline="") as f:
        return list(csv.reader(f))


def evaluate_map(scene, pred) -> float:
    out = scene["dir"] / f"{pred.stem}.json"
    assert cli(["evaluate", "--gt", str(scene["dir"] / "gt.csv"), "--pred", str(pred), "--json", str(out)]) == 0
    return json.loads(out.read_text())["map"]


def test_ten_thousand_boxes_on_one_image_read_back_exactly(scene):
    path = scene["dir"] / "sub.csv"
    big_row = next(r for r in csv_rows(path) if r[0] == "big")
    assert len(big_row[1]) > 131_072  # longer than the csv module's default field limit
    frame, ids = read_submission(path, with_ids=True)
    assert ids == ["big", "small"]
    big = frame[frame["image_id"] == "big"]
    assert len(big) == N_BOXES and (big["class_id"] == 0).all()
    dets = scene["dets"]
    np.testing.assert_allclose(big["score"], dets.scores, atol=0)  # written highest first: the same order
    np.testing.assert_allclose(big[["x_min", "y_min", "x_max", "y_max"]].to_numpy(), dets.boxes, atol=1e-9)


def test_evaluate_scores_the_big_image_as_the_known_answer_whatever_the_box_order(scene):
    expected_ap0 = all_point_ap(TP_RANKS, len(TP_RANKS))
    assert expected_ap0 == pytest.approx(0.307580, abs=1e-6)  # (1 + 1 + .6 + .4 + .05 + .012 + ... ) / 10
    path = scene["dir"] / "sub.csv"
    assert evaluate_map(scene, path) == pytest.approx((expected_ap0 + 1.0) / 2, abs=1e-12)

    # the same boxes in the reverse order on the line: the metric ranks by score, not by position
    rows = csv_rows(path)
    groups = rows[1][1].split()
    reversed_string = " ".join(" ".join(groups[i:i + 6]) for i in range(len(groups) - 6, -1, -6))
    assert reversed_string != rows[1][1] and sorted(reversed_string.split()) == sorted(groups)
    rows[1][1] = reversed_string
    reversed_path = scene["dir"] / "reversed.csv"
    with reversed_path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    assert evaluate_map(scene, reversed_path) == pytest.approx((expected_ap0 + 1.0) / 2, abs=1e-12)

    direct = evaluate_detections(read_labels(scene["dir"] / "gt.csv"), read_submission(path))
    assert direct.per_class[0] == pytest.approx(expected_ap0, abs=1e-12) and direct.per_class[14] == 1.0


def test_merge_submissions_keeps_all_ten_thousand_boxes(scene):
    d = scene["dir"]
    merged = d / "merged.csv"
    assert cli(["merge-submissions", str(d / "shard_small.csv"), str(d / "shard_big.csv"), "--out", str(merged)]) == 0
    assert merged.read_bytes() == (d / "sub.csv").read_bytes()  # rows copied verbatim, sorted by image_id
    frame = read_submission(merged)
    assert (frame["image_id"] == "big").sum() == N_BOXES and len(frame) == N_BOXES + 1
    assert evaluate_map(scene, merged) == pytest.approx((all_point_ap(TP_RANKS, 10) + 1.0) / 2, abs=1e-12)


def test_an_unbalanced_quote_after_the_big_row_names_its_line(scene, capsys):
    d = scene["dir"]
    broken = d / "quote.csv"
    text = (d / "sub.csv").read_bytes()
    broken.write_bytes(text.replace(b"\r\nsmall,", b'\r\n"small,') + b"extra,\r\n")
    with pytest.raises(UserError) as e:
        read_submission(broken)
    assert str(e.value).startswith(f"{broken}:3: a quote (\") opened on this line is not closed")
    for argv in (["evaluate", "--gt", str(d / "gt.csv"), "--pred", str(broken)],
                 ["merge-submissions", str(broken), "--out", str(d / "never.csv")]):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert f"{broken}:3: a quote" in err and "Traceback" not in err, err
    assert not (d / "never.csv").exists()
