"""Classifier pure parts: label sources (VinBigData soft labels, NIH CSV with bad rows, folder
per class), pos_weight and the empty-class warning, the probability CSV, scores (ECE, bootstrap
interval, multi-class report), augmentation shapes, weights loading (pickles refused), the
Grad-CAM layer table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxrdet.classifier.backbones import TARGET_LAYERS, build_backbone, load_weights, target_layer
from cxrdet.classifier.config import ARCHS
from cxrdet.classifier.data import positive_weights
from cxrdet.classifier.labels import VINBIGDATA_CLASSES, folder_labels, read_label_source
from cxrdet.classifier.scores import expected_calibration_error, multiclass_report, multilabel_report
from cxrdet.classifier.transforms import AugmentSettings, augment, resize_square
from cxrdet.errors import UserError
from cxrdet.formats.nih import read_nih_labels
from cxrdet.formats.probabilities import read_probabilities, write_probabilities

from cxrdet.classifier.config import ClassifierConfig

from classifier_fixtures import limit_threads, make_image_folder, make_vinbig, write_folds

limit_threads()
COLS = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]


def test_vinbigdata_soft_labels_are_reader_shares(tmp_path):
    rows = [("a", "Aortic enlargement", 0, "R1", 1, 1, 5, 5), ("a", "Aortic enlargement", 0, "R1", 6, 6, 9, 9),
            ("a", "Aortic enlargement", 0, "R2", 1, 1, 5, 5), ("a", "Cardiomegaly", 3, "R2", 1, 1, 5, 5),
            ("a", "No finding", 14, "R3", "", "", "", ""),
            ("b", "No finding", 14, "R1", "", "", "", "")]
    pd.DataFrame(rows, columns=COLS).to_csv(tmp_path / "train.csv", index=False)
    labels = read_label_source(tmp_path / "train.csv")
    assert (labels.source, labels.task, labels.class_names) == ("vinbigdata", "multilabel", VINBIGDATA_CLASSES)
    a = dict(zip(labels.class_names, labels.targets[0]))
    assert a["Aortic enlargement"] == pytest.approx(2 / 3)  # R1's two boxes count once
    assert a["Cardiomegaly"] == pytest.approx(1 / 3) and a["abnormal"] == pytest.approx(2 / 3)
    assert labels.targets[1].sum() == 0
    assert labels.positives()[0].tolist() == [1] + [0] * 13 + [1]  # majority of readers


def test_nih_csv_classes_and_line_numbered_errors(tmp_path):
    good = tmp_path / "nih.csv"
    good.write_text("Image Index,Finding Labels,Patient Age\n00000001_000.png,Cardiomegaly|Effusion,58\n"
                    "00000002_000.png,No Finding,81\n00000003_000.png,Effusion,22\n")
    labels = read_label_source(good)
    assert labels.source == "nih" and labels.class_names == ["Cardiomegaly", "Effusion"]
    assert labels.image_ids == ["00000001_000", "00000002_000", "00000003_000"]
    assert labels.targets.tolist() == [[1, 1], [0, 0], [0, 1]]

    bad = tmp_path / "bad.csv"
    bad.write_text("Image Index,Finding Labels\n00000001_000.png,Cardiomegaly\n\n,Effusion\n"
                   "00000003_000.png,No Finding|Effusion\n00000001_000.png,Effusion\n00000004_000.png,Mass||Nodule\n")
    with pytest.raises(UserError) as e:
        read_nih_labels(bad)
    msg = str(e.value)
    assert "4 bad row(s)" in msg
    assert f"{bad}:4: empty 'Image Index'" in msg  # the blank line 3 is counted
    assert f"{bad}:5:" in msg and "combines 'No Finding'" in msg
    assert f"{bad}:6: image '00000001_000.png' is listed twice (first on line 2)" in msg
    assert f"{bad}:7:" in msg and "empty finding" in msg

    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="neither a VinBigData train.csv"):
        read_label_source(tmp_path / "other.csv")


def test_folder_labels_use_the_prepare_ids(tmp_path):
    root = make_image_folder(tmp_path / "imgs", per_class=2)
    labels = folder_labels(root)
    assert labels.task == "multiclass" and labels.class_names == ["Bars", "Disc", "Square"]
    assert labels.image_ids[:2] == ["Bars__img_000", "Bars__img_001"]
    assert labels.targets.tolist() == [0, 0, 1, 1, 2, 2]
    (tmp_path / "one" / "A").mkdir(parents=True)
    with pytest.raises(UserError, match="at least 2"):
        folder_labels(tmp_path / "one")


def test_pos_weight_and_classes_without_positives():
    from cxrdet.classifier.labels import LabelSet

    train = LabelSet("nih", "multilabel", ["A", "B", "C"], list("wxyz"),
                     np.array([[1, 0, 0], [0, 0, 0], [0.5, 0, 0], [0, 1, 0]], np.float32))
    weights, empty = positive_weights(train, cap=2.0)
    assert weights == pytest.approx([2.5 / 1.5, 2.0, 1.0])  # B: 3/1 capped at 2; C has no positive
    assert empty == ["C"]


def test_probability_csv_round_trip_and_bad_rows(tmp_path):
    path = write_probabilities(tmp_path / "p.csv", ["Nodule/Mass", "a,b"], {"y": np.array([0.5, 1.0]), "x": [0.25, 0]})
    assert path.read_text().splitlines()[0] == 'image_id,Nodule/Mass,"a,b"'
    probs = read_probabilities(path)
    assert probs.image_ids == ["x", "y"] and probs.class_names == ["Nodule/Mass", "a,b"]
    np.testing.assert_array_equal(probs.values, [[0.25, 0.0], [0.5, 1.0]])
    (tmp_path / "bad.csv").write_text("image_id,A\nx,0.5\ny,1.5\nx,0.1\nz,abc\n")
    with pytest.raises(UserError) as e:
        read_probabilities(tmp_path / "bad.csv")
    assert "bad.csv:3: probabilities must be in [0, 1]" in str(e.value)
    assert "bad.csv:4: image_id 'x' also on line 2" in str(e.value) and "bad.csv:5:" in str(e.value)


def test_scores_golden_values():
    y = np.array([0, 0, 1, 1], float)
    p = np.array([0.05, 0.15, 0.95, 0.65])
    # bins: [0.0-0.1) {0.05: y0}, [0.1-0.2) {0.15: y0}, [0.9-1.0] {0.95: y1}, [0.6-0.7) {0.65: y1}
    assert expected_calibration_error(y, p) == pytest.approx((0.05 + 0.15 + 0.05 + 0.35) / 4)
    truth = np.array([[0, 1], [0, 0], [1, 1], [1, 0], [1, 1], [0, 0]])
    probs = np.array([[0.1, 0.9], [0.2, 0.1], [0.8, 0.4], [0.3, 0.3], [0.9, 0.8], [0.4, 0.5]])
    report = multilabel_report(["A", "B"], truth, probs, n_boot=200, seed=0)
    assert report["per_class"]["A"]["auroc"] == pytest.approx(8 / 9)
    assert report["per_class"]["B"]["auroc"] == pytest.approx(8 / 9)
    assert report["macro_auroc"] == pytest.approx(8 / 9)
    lo, hi = report["macro_auroc_ci95"]
    assert 0.3 < lo <= 8 / 9 <= hi <= 1.0
    mc = multiclass_report(["a", "b", "c"], np.array([0, 1, 2, 2]),
                           np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3], [0.1, 0.1, 0.8]]))
    assert mc["accuracy"] == 0.75 and mc["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert mc["per_class"]["b"]["precision"] == 0.5 and mc["per_class"]["c"]["recall"] == 0.5


def test_augment_keeps_the_shape_and_flip_mirrors():
    image = np.arange(48 * 40, dtype=np.uint32).reshape(48, 40).astype(np.uint8)
    square = resize_square(image, 32)
    assert square.shape == (32, 32) and square.dtype == np.uint8
    flip_only = AugmentSettings(hflip_prob=1.0, affine_prob=0.0, color_prob=0.0)
    np.testing.assert_array_equal(augment(square, np.random.default_rng(0), flip_only), square[:, ::-1])
    busy = augment(square, np.random.default_rng(1), AugmentSettings(1.0, 1.0, 0.2, 0.1, 1.0, 0.2, 0.3))
    assert busy.shape == (32, 32) and busy.dtype == np.uint8 and not np.array_equal(busy, square)


def test_weights_from_a_local_state_dict_and_pickles_refused(tmp_path):
    imagenet = build_backbone("resnet18", 1000)
    torch.save(imagenet.state_dict(), tmp_path / "r18.pth")
    model = build_backbone("resnet18", 3)
    loaded = load_weights(model, tmp_path / "r18.pth", "resnet18", log=lambda m: None)
    assert loaded == len(model.state_dict()) - 2  # all but the 1000-class fc weight and bias
    assert torch.equal(model.conv1.weight, imagenet.conv1.weight)
    torch.save(imagenet, tmp_path / "pickled.pth")  # a whole pickled module, not a state dict
    with pytest.raises(UserError, match="refused: it is not a plain state dict"):
        load_weights(build_backbone("resnet18", 3), tmp_path / "pickled.pth", "resnet18")
    torch.save(build_backbone("mobilenet_v3_small", 3).state_dict(), tmp_path / "mnv3.pth")
    with pytest.raises(UserError, match="expected a resnet18 state dict"):
        load_weights(build_backbone("resnet18", 3), tmp_path / "mnv3.pth", "resnet18")


def test_every_backbone_has_a_grad_cam_layer_with_a_4d_output():
    assert set(TARGET_LAYERS) == set(ARCHS)
    for arch in ("resnet18", "mobilenet_v3_small", "densenet121"):
        model = build_backbone(arch, 2).eval()
        seen = []
        target_layer(model, arch).register_forward_hook(lambda m, i, o: seen.append(o.shape))
        with torch.no_grad():
            assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2)
        assert len(seen) == 1 and len(seen[0]) == 4  # a conv feature map [B, C, h, w]


def test_table_lists_uncached_images_and_warns_about_empty_classes(tmp_path):
    from cxrdet.classifier.data import load_table

    paths = make_vinbig(tmp_path, n=8)
    extra = pd.DataFrame([("ghost", "No finding", 14, "R1", "", "", "", "")], columns=COLS)
    pd.concat([pd.read_csv(paths["labels"]), extra]).to_csv(paths["labels"], index=False)
    cfg = ClassifierConfig(cache=str(paths["cache"]), labels=str(paths["labels"]), folds=str(paths["folds"]))
    table = load_table(cfg)
    assert len(table.train_ids) + len(table.val_ids) == 8
    assert any("1 labelled image(s)" in n and "ghost" in n for n in table.notes)
    assert any("no positive example in the training folds for class(es) Atelectasis, Calcification" in n
               for n in table.notes)
    write_folds(paths["folds"], [f"img{k:04d}" for k in range(7)])  # one cached, labelled image without a fold
    with pytest.raises(UserError, match="1 image\\(s\\) of labels .* have no fold"):
        load_table(cfg)


def test_split_stratifies_nih_and_folder_sources(tmp_path):
    from cxrdet.cli import main as cli
    from cxrdet.formats.folds import read_folds

    root = make_image_folder(tmp_path / "imgs", per_class=4)
    assert cli(["split", "--labels", str(root), "--n-folds", "2", "--out", str(tmp_path / "f.csv")]) == 0
    folds = read_folds(tmp_path / "f.csv")
    assert len(folds) == 12
    for cls in ("Bars", "Disc", "Square"):  # stratified: every class split 2/2
        assert sorted(folds[f"{cls}__img_{k:03d}"] for k in range(4)) == [0, 0, 1, 1]
    nih = tmp_path / "nih.csv"
    nih.write_text("Image Index,Finding Labels\n" + "".join(
        f"{k:08d}_000.png,{'Effusion' if k % 2 else 'No Finding'}\n" for k in range(8)))
    assert cli(["split", "--labels", str(nih), "--n-folds", "2", "--out", str(tmp_path / "n.csv")]) == 0
    nf = read_folds(tmp_path / "n.csv")
    assert sorted(nf[f"{k:08d}_000"] for k in range(1, 8, 2)) == [0, 0, 1, 1]


@pytest.mark.slow
def test_densenet_files_with_torchvisions_old_key_names_load(tmp_path):
    import re

    imagenet = build_backbone("densenet121", 1000).state_dict()
    old = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in imagenet.items()
           if not k.endswith("num_batches_tracked")}  # the 2017 file predates these buffers
    assert "features.denseblock1.denselayer1.norm.1.weight" in old  # the hosted file's spelling
    torch.save(old, tmp_path / "densenet121-a639ec97.pth")
    model = build_backbone("densenet121", 15)
    assert load_weights(model, tmp_path / "densenet121-a639ec97.pth", "densenet121", log=lambda m: None) == \
        len(old) - 2  # every tensor but the 1000-class classifier
    assert torch.equal(model.features.denseblock1.denselayer1.norm1.weight,
                       imagenet["features.denseblock1.denselayer1.norm1.weight"])


@pytest.mark.parametrize("edit, says", [
    ({"size": "512"}, "size must be a finite integer, found str '512'"),
    ({"size": True}, "size must be a finite integer, found bool True"),
    ({"lr": float("nan")}, "lr must be a finite number, found float nan"),
    ({"class_names": ["a", 3]}, "class_names must be a list of strings, found list ['a', 3]"),
    ({"image_mean": [0.5, None, 0.5]}, "image_mean must be a list of finite numbers, found list [0.5, None, 0.5]"),
    ({"loggers": "csv"}, "loggers must be a list of strings, found str 'csv'"),
    ({"class_names": ["a", "b", "a"]}, "class_names lists ['a'] more than once"),
])
def test_classifier_config_load_checks_each_fields_type(tmp_path, edit, says):
    import json

    path = tmp_path / "config.json"
    path.write_text(json.dumps({**ClassifierConfig(class_names=["a", "b"]).to_dict(), **edit}))
    with pytest.raises(UserError) as e:
        ClassifierConfig.load(path)
    assert str(e.value).startswith(f"{path}: ") and says in str(e.value)


def test_classifier_config_load_refuses_what_is_no_settings_object(tmp_path):
    path = tmp_path / "config.json"
    for data, says in [(b"[1, 2]", "expected a JSON object of classifier settings, found list"),
                       (b"\xff{}", "is not valid UTF-8 JSON"), (b"[" * 100_000, "is not valid UTF-8 JSON")]:
        path.write_bytes(data)
        with pytest.raises(UserError, match="classifier") as e:
            ClassifierConfig.load(path)
        assert str(path) in str(e.value) and says in str(e.value)
    good = ClassifierConfig(size=224, lr=1e-3, image_mean=[0.5, 0.5, 0.5])
    good.save(path)
    assert ClassifierConfig.load(path) == good
    path.write_text('{"lr": 1, "size": 224}')  # an int where a float is expected is a float
    assert ClassifierConfig.load(path).lr == 1.0 and isinstance(ClassifierConfig.load(path).lr, float)


def test_label_sources_name_the_line_of_a_broken_quote_or_a_joined_image_index(tmp_path):
    head = "Image Index,Finding Labels\n00000001_000.png,Cardiomegaly\n"
    cases = [(head + '"00000002_000.png,Effusion\n00000003_000.png,No Finding\n',
              ":3: a quote (\") opened on this line is never closed"),
             (head + '"00000002_000.png,Effusion\n00000003_000.png",No Finding\n',  # closed a line later
              ":3: Image Index '00000002_000.png,Effusion\\n00000003_000.png' is not a plain file name"),
             ('\n\n"Image Index,Finding Labels\n', ":3: a quote (\") opened on this line is not closed"),
             ("\n \n", ": the file is empty")]
    for k, (text, says) in enumerate(cases):
        path = tmp_path / f"nih{k}.csv"
        path.write_text(text)
        with pytest.raises(UserError) as e:
            read_label_source(path)
        assert f"{path}{says}" in str(e.value), str(e.value)


def test_probability_csv_is_read_like_every_cxrdet_csv(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes("\ufeffimage_id, A ,B\r\n x1 ,0.5,1\r\n\r\ny2,0,0.25\r\n".encode())  # Excel: BOM, spaces
    probs = read_probabilities(path)
    assert probs.class_names == ["A", "B"] and probs.image_ids == ["x1", "y2"]
    np.testing.assert_array_equal(probs.values, [[0.5, 1.0], [0.0, 0.25]])
    for text, says in [("image_id,A,A\nx,0,1\n", ":1: class names must be non-empty and distinct"),
                       ("image_id,A,\nx,0,1\n", ":1: class names must be non-empty and distinct"),
                       ('image_id,A\nx,0.5\n"y,0.5\n', ":3: a quote (\") opened on this line is not closed"),
                       ("image_id,A\n ,0.5\n", ":2: empty image_id"),
                       ("image_id,A\nx,nan\ny,1e309\n", ":3: probabilities must be in [0, 1]"),
                       ("image_id,A\nx," + "9" * 200_000 + "\n", ":2: probabilities must be in [0, 1], found ['999")]:
        path.write_text(text)
        with pytest.raises(UserError) as e:
            read_probabilities(path)
        assert f"{path}{says}" in str(e.value) and len(str(e.value)) < 2000, str(e.value)[:300]
    path.write_bytes(b"image_id,A\nx,0.\xff5\n")
    with pytest.raises(UserError, match=r"p.csv:2: not UTF-8 text"):
        read_probabilities(path)


def test_resize_collate_stacks_one_tensor_per_input_side_and_lists_failures():
    import torch

    from cxrdet.classifier.predict import ResizeCollate
    from cxrdet.classifier.transforms import resize_square
    from cxrdet.inference.classify import default_workers
    from cxrdet.inference.sources import Sample

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (40, 30), dtype=np.uint8), rng.integers(0, 256, (20, 24), dtype=np.uint8)
    samples = [Sample("a", a, (400, 300), {}, {}), Sample("bad", None, None, {}, {}, "truncated file"),
               Sample("b", b, (200, 240), {}, {})]
    out = ResizeCollate([16, 32, 16])(samples)
    assert out.ids == ["a", "b"] and out.failed == [("bad", "truncated file")] and out.orig_hws == [(400, 300), (200, 240)]
    assert sorted(out.inputs) == [16, 32] and out.images == [None, None]  # cache-size images only when kept
    for side, batch in out.inputs.items():
        assert batch.dtype == torch.uint8 and tuple(batch.shape) == (2, side, side)
        assert np.array_equal(batch[1].numpy(), resize_square(b, side))  # shrinks a, enlarges b
    kept = ResizeCollate([16], keep_images=True)(samples)
    assert np.array_equal(kept.images[0].numpy(), a)
    empty = ResizeCollate([16])([samples[1]])
    assert empty.ids == [] and tuple(empty.inputs[16].shape) == (0, 16, 16)
    assert default_workers(True, torch.device("cpu")) == 0  # a cache on a CPU: the forward keeps the cores
    assert default_workers(False, torch.device("cpu")) == 2 and default_workers(True, torch.device("cuda")) == 2


def test_artifact_backbone_skips_random_init_but_holds_exactly_the_saved_weights():
    import torch

    from cxrdet.classifier.backbones import build_backbone
    from cxrdet.classifier.export import backbone_with_weights

    torch.manual_seed(0)
    saved = build_backbone("resnet18", 3).eval()
    loaded = backbone_with_weights("resnet18", 3, saved.state_dict()).eval()
    assert not any(t.is_meta for t in (*loaded.parameters(), *loaded.buffers()))
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(loaded(x), saved(x))
    broken = dict(saved.state_dict())
    broken.pop("fc.bias")
    with pytest.raises(RuntimeError, match="fc.bias"):  # strict: a missing tensor is an error, never left unset
        backbone_with_weights("resnet18", 3, broken)
