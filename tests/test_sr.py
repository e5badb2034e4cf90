"""DICOM Comprehensive SR output: the code table, build_sr/read_sr round trips, dcmtk's parser,
sources that cannot carry an SR, and `cxrdet infer --sr-dir` against its own submission."""

from __future__ import annotations

import subprocess

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import ComprehensiveSRStorage

from dicom_fixtures import phantom
from sr_fixtures import PATIENT_ID, STUDY_UID, dcmtk, detector_export, write_study

from cxrdet.classes import CLASS_NAMES, NUM_FINDINGS
from cxrdet.cli import main as cli
from cxrdet.detections import Detections
from cxrdet.dicomio.write import write_dicom
from cxrdet.dicomout import codes
from cxrdet.dicomout.sr import ImageResult, build_sr, read_sr, sr_bytes
from cxrdet.errors import InputFailure
from cxrdet.formats.submission import read_submission


def header(path):
    return pydicom.dcmread(path, stop_before_pixels=True)


def dsrdump_ok(path) -> str:
    out = subprocess.run([dcmtk("dsrdump"), str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "E:" not in out.stderr and "W:" not in out.stderr, out.stderr
    return out.stdout


def test_code_table_is_one_code_per_class_and_round_trips():
    assert len(codes.FINDING_CODES) == NUM_FINDINGS
    assert len({(c.value, c.scheme_designator) for c in codes.FINDING_CODES}) == NUM_FINDINGS
    assert [codes.class_of(c) for c in codes.FINDING_CODES] == list(range(NUM_FINDINGS))
    # golden: the standard codes of the table (SNOMED CT / DICOM), by class name
    by_name = {CLASS_NAMES[k]: (c.scheme_designator, c.value) for k, c in enumerate(codes.FINDING_CODES)}
    assert by_name["Cardiomegaly"] == ("SCT", "8186001")
    assert by_name["Pleural effusion"] == ("SCT", "60046008")
    assert by_name["Pneumothorax"] == ("SCT", "36118008")
    assert by_name["Lung Opacity"] == ("DCM", "112001")
    assert by_name["Nodule/Mass"][0] == codes.PRIVATE_SCHEME
    assert [codes.gate_zone(p, 0.08, 0.95).meaning for p in (0.0, 0.079, 0.08, 0.5, 0.95, 1.0)] == \
        ["Normal", "Normal", "Uncertain", "Uncertain", "Abnormal", "Abnormal"]
    with pytest.raises(ValueError, match="not one of cxrdet's 14 finding codes"):
        codes.class_of(codes.P_ABNORMAL)


def test_sr_round_trip_boxes_scores_gate_and_classifier(tmp_path):
    src = write_study(tmp_path / "in", n=1)["img0"]
    h = header(src)
    dets = Detections([[1.25, 2.5, 30.75, 40.125], [0, 0, 1, 1], [5, 6, 99.5, 119.0]], [0.55, 0.3, 0.9], [3, 14, 10])
    result = ImageResult(0.97, 0.08, 0.95, {3: 0.7, 12: 0.01})
    path = tmp_path / "sr.dcm"
    path.write_bytes(sr_bytes(h, dets, result))
    sr = pydicom.dcmread(path)
    back = read_sr(sr)
    # findings only (the class-14 row is the gate decision), best first
    assert back.detections.class_ids.tolist() == [10, 3]
    np.testing.assert_allclose(back.detections.boxes, [[5, 6, 99.5, 119.0], [1.25, 2.5, 30.75, 40.125]], atol=1e-4)
    np.testing.assert_allclose(back.detections.scores, [0.9, 0.55])
    assert back.result == result and back.gate_decision == "Abnormal"
    assert len(set(back.tracking_uids)) == 2
    assert back.source_sop_instance_uid == h.SOPInstanceUID and back.study_instance_uid == STUDY_UID
    # a new series of the source's study, patient copied, private scheme declared
    assert sr.SOPClassUID == ComprehensiveSRStorage and sr.Modality == "SR"
    assert sr.StudyInstanceUID == h.StudyInstanceUID and sr.SeriesInstanceUID != h.SeriesInstanceUID
    assert (sr.PatientID, str(sr.PatientName), sr.AccessionNumber) == (PATIENT_ID, "TEST^PATIENT", "ACC1")
    assert [i.CodingSchemeDesignator for i in sr.CodingSchemeIdentificationSequence] == [codes.PRIVATE_SCHEME]
    text = dsrdump_ok(path)
    assert "(8186001,SCT,\"Cardiomegaly\")" in text and "POLYLINE" in text


def test_sr_without_gate_holds_no_image_level_numbers(tmp_path):
    h = header(write_study(tmp_path / "in", n=1)["img0"])
    back = read_sr(build_sr(h, Detections([[1, 1, 9, 9]], [0.4], [7])))
    assert back.result == ImageResult() and back.gate_decision is None
    assert back.detections.class_ids.tolist() == [7]


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "PatientID", "SOPInstanceUID", "SeriesInstanceUID"])
def test_source_without_references_is_refused_by_name(tmp_path, missing):
    path = write_dicom(tmp_path / "x.dcm", phantom(40, 40), extra={missing: None})
    with pytest.raises(InputFailure, match=f"no {missing} "):
        build_sr(header(path), Detections([[1, 1, 9, 9]], [0.4], [7]))


@pytest.mark.parametrize("edit", [{"PatientOrientation": None}, {"ImagerPixelSpacing": None},
                                  {"PatientOrientation": "L"}, {"ImagerPixelSpacing": "0.14"}, {"Modality": "CT"}])
def test_cr_dx_headers_without_the_library_descriptors_still_get_their_sr(tmp_path, edit):
    # many CR/DX files lack PatientOrientation or ImagerPixelSpacing, which highdicom's image
    # library descriptors read; the SR is written without those optional descriptors
    path = write_dicom(tmp_path / "x.dcm", phantom(40, 40), extra={"ImagerPixelSpacing": [0.14, 0.14],
                                                                  "PatientOrientation": ["L", "F"], **edit})
    h = header(path)
    back = read_sr(pydicom.dcmread(pydicom.filebase.DicomBytesIO(sr_bytes(h, Detections([[1, 1, 9, 9]], [0.4], [7])))))
    assert back.detections.class_ids.tolist() == [7] and back.source_sop_instance_uid == h.SOPInstanceUID
    assert h == header(path)  # the caller's header is not changed


@pytest.mark.parametrize("edit, says", [
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1/1"}, "is not a DICOM image storage class"),
    ({"SOPClassUID": str(ComprehensiveSRStorage)}, "is not a DICOM image storage class"),
    ({"Modality": None}, "no Modality (0008,0060)"),
    ({"Modality": "SR"}, "Modality 'SR' (0008,0060), which is no image"),
])
def test_source_headers_no_sr_can_reference_are_input_failures(tmp_path, edit, says):
    h = header(write_dicom(tmp_path / "x.dcm", phantom(40, 40)))
    for keyword, value in edit.items():
        if value is None:
            del h[keyword]
        else:
            setattr(h, keyword, value)
    with pytest.raises(InputFailure) as e:
        build_sr(h, Detections([[1, 1, 9, 9]], [0.4], [7]))
    assert says in str(e.value)


def test_box_outside_the_source_image_is_an_error(tmp_path):
    h = header(write_dicom(tmp_path / "x.dcm", phantom(40, 30)))
    with pytest.raises(ValueError, match="inside the 30x40 source image"):
        build_sr(h, Detections([[1, 1, 31, 9]], [0.4], [7]))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return detector_export(tmp_path_factory.mktemp("det") / "export")


def test_infer_sr_dir_matches_the_submission_and_lists_sources_without_ids(tmp_path, model):
    dicoms = tmp_path / "dicoms"
    write_study(dicoms, n=4, i2={"PatientID": None}, i3={"StudyInstanceUID": None})
    sr_dir, sub = tmp_path / "sr", tmp_path / "sub.csv"
    rc = cli(["infer", "--model", str(model), "--dicom-dir", str(dicoms), "--sr-dir", str(sr_dir),
              "--sr-conf", "0", "--out", str(sub), "--workers", "0", "--batch-size", "2", "--device", "cpu"])
    assert rc == 3
    errors = pd.read_csv(tmp_path / "sub.errors.csv")
    reasons = dict(zip(errors["item"], errors["reason"]))
    assert sorted(reasons) == ["img2", "img3"]
    assert "no PatientID (0010,0020)" in reasons["img2"] and "no StudyInstanceUID" in reasons["img3"]
    assert sorted(p.name for p in sr_dir.iterdir()) == ["img0.dcm", "img1.dcm"]
    submitted = read_submission(sub)
    series = {pydicom.dcmread(sr_dir / f"{i}.dcm").SeriesInstanceUID for i in ("img0", "img1")}
    assert len(series) == 1 and series.isdisjoint({header(p).SeriesInstanceUID for p in dicoms.iterdir()})
    for image_id in ("img0", "img1"):
        back = read_sr(pydicom.dcmread(sr_dir / f"{image_id}.dcm"))
        rows = submitted[submitted["image_id"] == image_id].sort_values("score", ascending=False)
        assert len(back.detections) == len(rows) > 0
        np.testing.assert_allclose(back.detections.scores, rows["score"], atol=1e-4)
        np.testing.assert_allclose(back.detections.boxes, rows[["x_min", "y_min", "x_max", "y_max"]], atol=1e-3)
        assert back.detections.class_ids.tolist() == rows["class_id"].tolist()
        assert back.source_sop_instance_uid == header(dicoms / f"{image_id}.dcm").SOPInstanceUID
        dsrdump_ok(sr_dir / f"{image_id}.dcm")


def test_infer_sr_dir_refuses_inputs_without_source_dicoms(tmp_path, model, capsys):
    rc = cli(["infer", "--model", str(model), "--cache", str(tmp_path / "c.h5"), "--sr-dir", str(tmp_path / "sr"),
              "--out", str(tmp_path / "sub.csv")])
    assert rc == 2
    assert "--sr-dir needs --dicom-dir" in capsys.readouterr().err


def test_deploy_doc_prints_the_code_table():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    rows = [line.split("|")[1:-1] for line in doc.splitlines() if line.startswith("| ") and line[2].isdigit()]
    table = [(int(k), name.strip(), scheme.strip(), code.strip(), meaning.strip()) for k, name, scheme, code, meaning in rows]
    assert table == [(k, CLASS_NAMES[k], c.scheme_designator, c.value, c.meaning)
                     for k, c in enumerate(codes.FINDING_CODES)]


def test_sr_writer_keeps_findings_from_its_minimum_score(tmp_path):
    from types import SimpleNamespace

    from cxrdet.dicomout.writer import SRWriter

    src = write_study(tmp_path / "in", n=1)["img0"]
    writer = SRWriter(tmp_path / "sr", {"img0": src}, 0.1, 0.9, min_score=0.3)
    dets = Detections([[1, 1, 9, 9], [2, 2, 20, 20], [3, 3, 30, 30], [0, 0, 1, 1]], [0.29, 0.3, 0.8, 0.5], [1, 2, 3, 14])
    path = writer(SimpleNamespace(image_id="img0"), dets, {"p_abnormal": 0.5})
    back = read_sr(pydicom.dcmread(path))
    assert back.detections.scores.tolist() == [0.8, 0.3] and back.detections.class_ids.tolist() == [3, 2]
    assert back.result == ImageResult(0.5, 0.1, 0.9) and back.gate_decision == "Uncertain"
    with pytest.raises(Exception, match="cannot be used as a file name"):
        writer.check_names(["../evil"])


def test_infer_sr_dir_with_a_gate_carries_its_probability_and_decision(tmp_path, model):
    from sr_fixtures import metadata_gate

    dicoms = tmp_path / "dicoms"  # ages 25, 50, 75: normal, uncertain, abnormal under the gate
    study = write_study(dicoms, n=3, i0={"PatientAge": "025Y"}, i1={"PatientAge": "050Y"}, i2={"PatientAge": "075Y"})
    gate = metadata_gate(tmp_path / "gate", study)
    sr_dir, sub, il = tmp_path / "sr", tmp_path / "sub.csv", tmp_path / "il.csv"
    assert cli(["infer", "--model", str(model), "--dicom-dir", str(dicoms), "--gate", str(gate), "--sr-dir",
                str(sr_dir), "--sr-conf", "0", "--image-level-out", str(il), "--out", str(sub), "--workers", "0",
                "--device", "cpu"]) == 0
    p = pd.read_csv(il, dtype={"image_id": str}).set_index("image_id")["p_abnormal"]
    submitted = read_submission(sub)
    decisions = {}
    for image_id in study:
        back = read_sr(pydicom.dcmread(sr_dir / f"{image_id}.dcm"))
        rows = submitted[submitted["image_id"] == image_id]
        normal_rows = rows[rows["class_id"] == 14]
        assert back.result.p_abnormal == pytest.approx(p[image_id], abs=1e-6)
        assert back.result.low < back.result.high
        decisions[image_id] = back.gate_decision
        assert len(back.detections) == int((rows["class_id"] != 14).sum())
        if back.gate_decision == "Normal":  # the submission says only '14 1 0 0 1 1'
            assert normal_rows["score"].tolist() == [1.0] and len(back.detections) == 0
        elif back.gate_decision == "Uncertain":  # boxes + '14 (1-p)'
            assert normal_rows["score"].tolist() == [pytest.approx(1 - p[image_id], abs=1e-4)]
        else:  # boxes only
            assert len(normal_rows) == 0
    assert decisions == {"img0": "Normal", "img1": "Uncertain", "img2": "Abnormal"}


def test_build_sr_takes_an_image_level_row(tmp_path):
    h = header(write_study(tmp_path / "in", n=1)["img0"])
    dets = Detections([[1, 1, 9, 9]], [0.4], [7])
    assert read_sr(build_sr(h, dets, {"p_abnormal": 0.25, "p_7": 0.4})).result == ImageResult(0.25)
    assert read_sr(build_sr(h, dets, {"p_abnormal": float("nan")})).result == ImageResult()


@pytest.mark.slow
def test_infer_sr_dir_with_a_classifier_carries_its_finding_probabilities(tmp_path, model):
    """infer --classifier --sr-dir: each SR holds the 14 findings' classifier probabilities, the
    same numbers as the image-level CSV's clf_* columns (abnormal stays in the CSV only)."""
    from classifier_fixtures import limit_threads, make_vinbig, train_args

    from cxrdet.formats.image_level import classifier_column

    limit_threads()
    run = tmp_path / "clf"
    assert cli(train_args(make_vinbig(tmp_path / "clfdata", n=24), run, "--epochs", "1")) == 0
    dicoms = tmp_path / "dicoms"
    write_study(dicoms, n=2)
    sr_dir, level = tmp_path / "sr", tmp_path / "level.csv"
    assert cli(["infer", "--model", str(model), "--dicom-dir", str(dicoms), "--classifier", str(run / "export"),
                "--image-level-out", str(level), "--sr-dir", str(sr_dir), "--out", str(tmp_path / "sub.csv"),
                "--workers", "0", "--device", "cpu"]) == 0
    rows = pd.read_csv(level, dtype={"image_id": str}).set_index("image_id")
    assert classifier_column("abnormal") in rows.columns
    for image_id in ("img0", "img1"):
        probs = read_sr(pydicom.dcmread(sr_dir / f"{image_id}.dcm")).result.classifier
        assert sorted(probs) == list(range(NUM_FINDINGS))
        expected = [rows.loc[image_id, classifier_column(CLASS_NAMES[k])] for k in range(NUM_FINDINGS)]
        np.testing.assert_allclose([probs[k] for k in range(NUM_FINDINGS)], expected, atol=1e-5)
