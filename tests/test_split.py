"""cxrdet split: multilabel-stratified folds that put a rare class in every fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrdet.cli import main as cli_main
from cxrdet.errors import UserError
from label_fixtures import labels_frame
from cxrdet.split import fold_class_counts, make_folds


def synthetic_labels(n=120, rare=5, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        image = f"img{i:03d}"
        if i < rare:  # Pneumothorax: exactly `rare` images
            rows.append(dict(image_id=image, class_id=12, rad_id="R1", x_min=1, y_min=1, x_max=9, y_max=9))
        elif rng.random() < 0.3:
            c = int(rng.choice([0, 3, 10, 11]))
            rows.append(dict(image_id=image, class_id=c, rad_id="R2", x_min=1, y_min=1, x_max=9, y_max=9))
        else:
            rows += [dict(image_id=image, class_id=14, rad_id=r) for r in ("R1", "R2", "R3")]
    return labels_frame(rows)


def test_rare_class_in_every_fold_and_each_image_once():
    labels = synthetic_labels()
    folds = make_folds(labels, 5, seed=7)
    assert list(folds.columns) == ["image_id", "fold"]
    assert folds.image_id.is_unique and set(folds.image_id) == set(labels.image_id)
    assert set(folds.fold) == {0, 1, 2, 3, 4}
    counts = fold_class_counts(labels, folds)
    assert (counts.loc["Pneumothorax"] == 1).all()
    assert counts.loc["images"].sum() == 120
    assert (counts.loc["images"] == 24).all()


def test_same_seed_same_split_other_seed_differs():
    labels = synthetic_labels()
    a, b, c = make_folds(labels, 4, 1), make_folds(labels, 4, 1), make_folds(labels, 4, 2)
    pd.testing.assert_frame_equal(a, b)
    assert not a.fold.equals(c.fold)


def test_bad_fold_count():
    with pytest.raises(UserError, match="needs at least 2 folds, got 1$"):
        make_folds(synthetic_labels(), 1)
    with pytest.raises(UserError, match="7 folds is more than the 6 labelled images; use at most 6 folds"):
        make_folds(synthetic_labels(n=6, rare=1), 7)


def test_default_seed_is_the_cli_default_and_fixes_the_split(tmp_path):
    labels_csv = tmp_path / "train.csv"
    synthetic_labels().to_csv(labels_csv, index=False)
    out = tmp_path / "folds.csv"
    assert cli_main(["split", "--labels", str(labels_csv), "--n-folds", "4", "--out", str(out)]) == 0
    written = pd.read_csv(out, dtype={"image_id": str})
    pd.testing.assert_frame_equal(written, make_folds(synthetic_labels(), 4, seed=0), check_dtype=False)


@pytest.mark.parametrize("old, says", [
    ("5", "the fold count is now --n-folds 5"),
    ("FOLDS.csv", "it writes one to --out"),
])
def test_old_folds_count_spelling_exits_2_naming_n_folds(tmp_path, capsys, old, says):
    labels_csv = tmp_path / "train.csv"
    synthetic_labels().to_csv(labels_csv, index=False)
    out = tmp_path / "folds.csv"
    with pytest.raises(SystemExit) as e:
        cli_main(["split", "--labels", str(labels_csv), "--folds", old, "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"cxrdet split: error: --folds {old}: " in err and says in err
    assert not out.exists()


def test_cli_fold_count_below_2_exit_2_names_the_flag(tmp_path, capsys):
    labels_csv = tmp_path / "train.csv"
    synthetic_labels().to_csv(labels_csv, index=False)
    assert cli_main(["split", "--labels", str(labels_csv), "--n-folds", "1", "--out", str(tmp_path / "f.csv")]) == 2
    assert "--n-folds must be at least 2 for a K-fold split, got 1" in capsys.readouterr().err


def test_cli_writes_folds_and_prints_table(tmp_path, capsys):
    labels_csv = tmp_path / "train.csv"
    synthetic_labels().to_csv(labels_csv, index=False)
    out = tmp_path / "folds.csv"
    assert cli_main(["split", "--labels", str(labels_csv), "--n-folds", "3", "--seed", "0", "--out", str(out)]) == 0
    folds = pd.read_csv(out)
    assert len(folds) == 120 and sorted(folds.fold.unique()) == [0, 1, 2]
    printed = capsys.readouterr().out
    assert "Pneumothorax" in printed and "fold 2" in printed


def test_cli_bad_labels_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\na,ILD,5,R1,5,1,2,3\n")
    assert cli_main(["split", "--labels", str(bad), "--n-folds", "2", "--out", str(tmp_path / "f.csv")]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
