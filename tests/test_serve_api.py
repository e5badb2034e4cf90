"""``cxrdet serve`` API in-process (FastAPI TestClient): the answer equals ``cxrdet infer``'s,
untrusted uploads are refused with a JSON reason and the server keeps serving, limits, token,
the bounded queue, the result endpoints, local API docs."""

from __future__ import annotations

import tempfile

import cv2
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

import cxrdet.serve.uploads
from cxrdet.cli import main as cli
from cxrdet.dicomio.write import write_dicom
from cxrdet.formats.submission import read_submission
from cxrdet.inference.label_layout import overlaps
from cxrdet.serve.app import create_app
from cxrdet.serve.service import ServeConfig, load_service
from cxrdet.serve.uploads import display_id
from dicom_fixtures import phantom, write_bad_files
from serve_fixtures import make_artifact, make_gate, write_dicoms


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    return {"dir": d, "model": make_artifact(d / "export"), "gate": make_gate(d / "gate"),
            "dicoms": write_dicoms(d / "dicoms", 2)}


def make_client(artifacts, gate: bool = True, **overrides) -> TestClient:
    import torch

    config = ServeConfig(models=(str(artifacts["model"]),), gate=str(artifacts["gate"]) if gate else None, **overrides)
    return TestClient(create_app(load_service(config, torch.device("cpu"))))


@pytest.fixture(scope="module")
def client(artifacts):
    with make_client(artifacts, max_upload_mb=1.0, max_pixels=4_000_000) as c:
        yield c


def post(client, path, name=None, data=None, **kw):
    content = path.read_bytes() if data is None else data
    return client.post("/v1/predict", files={"file": (name or path.name, content)}, **kw)


def test_api_findings_equal_what_cxrdet_infer_writes(artifacts, tmp_path):
    d = artifacts["dir"]
    out = tmp_path / "sub.csv"
    assert cli(["infer", "--model", str(artifacts["model"]), "--gate", str(artifacts["gate"]), "--dicom-dir",
                str(d / "dicoms"), "--tta", "hflip", "--batch-size", "1", "--workers", "0", "--device", "cpu",
                "--image-level-out", str(tmp_path / "il.csv"), "--out", str(out)]) == 0
    rows = pd.read_csv(out, dtype={"image_id": str}, keep_default_na=False).set_index("image_id")["PredictionString"]
    parsed = read_submission(out)
    il = pd.read_csv(tmp_path / "il.csv", dtype={"image_id": str}).set_index("image_id")
    n_findings = 0
    with make_client(artifacts, tta="hflip") as client:  # TTA: the fusion path too
        answers = [post(client, path) for path in artifacts["dicoms"]]
    for path, r in zip(artifacts["dicoms"], answers):
        assert r.status_code == 200, r.text
        body = r.json()
        image_id = path.stem
        assert body["image_id"] == image_id
        assert body["prediction_string"] == rows[image_id]  # the exact line infer writes
        expected = parsed[(parsed["image_id"] == image_id) & (parsed["class_id"] != 14)]
        got = body["findings"]
        assert len(got) == len(expected) > 0
        n_findings += len(got)
        np.testing.assert_allclose([f["box"] for f in got], expected[["x_min", "y_min", "x_max", "y_max"]].to_numpy(),
                                   atol=1e-4)  # the CSV rounds to 4 decimals
        np.testing.assert_allclose([f["score"] for f in got], expected["score"].to_numpy(), atol=1e-4)
        assert body["p_abnormal"] == pytest.approx(il.loc[image_id, "p_abnormal"], abs=1e-5)
        p = [c["p"] for c in body["image_level"]["classes"]]
        np.testing.assert_allclose(p, il.loc[image_id, [f"p_{k}" for k in range(14)]].to_numpy(float), atol=1e-5)
        assert body["gate_zone"] == "uncertain"  # the fixture's thresholds 0 / 1.01
        tokens = body["prediction_string"].split()
        assert [tokens[i] for i in range(0, len(tokens), 6)].count("14") == 1  # the gate's hedge row
    assert n_findings > 0


def test_predict_answer_shape_and_display_layout(client, artifacts):
    body = post(client, artifacts["dicoms"][0]).json()
    assert (body["height"], body["width"]) == (240, 192)  # original Rows, Columns
    assert body["models"]["detectors"][0]["arch"] == "fasterrcnn_resnet18_fpn"
    assert len(body["models"]["detectors"][0]["sha256"]) == 16
    assert body["models"]["gate"]["low"] == 0.0 and body["models"]["tta"] == "none"
    assert set(body["timings"]) == {"upload_ms", "decode_ms", "queue_ms", "model_ms", "total_ms"}
    assert body["classifier"] is None  # hook, empty without a classifier
    assert body["downloads"]["sr"] == f"/v1/results/{body['request_id']}/sr.dcm"  # a DICOM upload
    d = body["display"]
    assert (d["height"], d["width"]) == (768, 616)  # the 96 x 77 cache image, enlarged 8x
    scores = [i["score"] for i in d["items"]]
    assert scores == sorted(scores, reverse=True) and len(d["items"]) == len(body["findings"])
    rects = [i["label"]["rect"] for i in d["items"] if i["label"]]
    assert len(rects) >= len(d["items"]) - 2
    assert not any(overlaps(a, b) for k, a in enumerate(rects) for b in rects[k + 1:])
    assert all(0 <= r[0] and 0 <= r[1] and r[2] <= d["width"] and r[3] <= d["height"] for r in rects)


def test_result_image_and_overlay_endpoints(client, artifacts):
    body = post(client, artifacts["dicoms"][1]).json()
    image = cv2.imdecode(np.frombuffer(client.get(body["display"]["image_url"]).content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.shape == (74, 96) and image.dtype == np.uint8  # the 96 px cache image the detector saw
    full = client.get(body["downloads"]["overlay_png"], params={"min_score": 0})
    assert full.status_code == 200 and full.headers["content-type"] == "image/png"
    overlay = cv2.imdecode(np.frombuffer(full.content, np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape[:2] == (body["display"]["height"], body["display"]["width"])
    none = client.get(body["downloads"]["overlay_png"], params={"min_score": 1.0}).content
    assert none != full.content  # boxes drawn from score 0, none at 1
    assert client.get(body["downloads"]["overlay_png"], params={"classes": "99"}).status_code == 422
    missing = client.get("/v1/results/nope/overlay.png")
    assert missing.status_code == 404 and "no recent result" in missing.json()["detail"]


def test_png_and_jpeg_uploads_are_predicted_at_their_own_size(client, artifacts):
    grey = (phantom(150, 120, seed=3) >> 4).astype(np.uint8)
    for suffix in (".png", ".jpg"):
        ok, buf = cv2.imencode(suffix, grey)
        r = client.post("/v1/predict", files={"file": (f"film{suffix}", buf.tobytes())})
        assert r.status_code == 200, r.text
        assert (r.json()["height"], r.json()["width"], r.json()["image_id"]) == (150, 120, "film")


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size in its IHDR chunk and holds no pixels (a decompression bomb's head)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _bad_uploads(tmp_path) -> dict[str, tuple[bytes, int, str]]:
    folder = tmp_path / "bad"
    reasons = write_bad_files(folder)
    cases = {name: ((folder / name).read_bytes(), 422, reason) for name, reason in reasons.items()}
    huge = write_dicom(tmp_path / "huge.dicom", phantom(8, 8), extra={"Rows": 60000, "Columns": 60000})
    cases["huge.dicom"] = (huge.read_bytes(), 422, "exceeds the server's limit of 4,000,000 pixels")
    cases["noise.bin"] = (np.random.default_rng(0).bytes(4000), 422, "not a DICOM file")
    cases["cut.png"] = (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, 422, "not a readable PNG/JPEG")
    cases["bomb.png"] = (_png_header(30000, 30000), 422, "image too large")  # Pillow's own bomb check
    cases["wide.png"] = (_png_header(5000, 1000), 422, "5000 x 1000 = 5,000,000 pixels exceeds")
    cases["big.dicom"] = (b"\0" * (2 * 2**20), 413, "exceeds the server's limit of 1.0 MiB")
    # Columns (0028,0011) US with an odd length: pydicom raises (BytesLengthException) only when read
    data = write_dicom(tmp_path / "odd.dicom", phantom(8, 8)).read_bytes()
    at = data.index(b"\x28\x00\x11\x00US\x02\x00")
    cases["odd_columns.dicom"] = (data[:at + 6] + b"\x01\x00 " + data[at + 10:], 422, "malformed image size tags")
    return cases


def test_bad_uploads_get_a_4xx_json_reason_and_the_server_keeps_serving(client, artifacts, tmp_path):
    good = artifacts["dicoms"][1]
    for name, (data, status, reason) in _bad_uploads(tmp_path).items():
        r = client.post("/v1/predict", files={"file": (name, data)})
        assert r.status_code == status, (name, r.text)
        assert reason in r.json()["detail"], (name, r.json())
        assert "cxrdet-serve-" not in r.json()["detail"]  # no server path in an answer
        assert post(client, good).status_code == 200, name  # still serving after each bad one


def test_absurd_declared_size_is_refused_before_any_decoding(client, tmp_path, monkeypatch):
    def must_not_decode(*a, **k):
        raise AssertionError("decoded an image whose header should have been refused")

    monkeypatch.setattr(cxrdet.serve.uploads, "dicom_sample", must_not_decode)
    huge = write_dicom(tmp_path / "huge.dicom", phantom(8, 8), extra={"Rows": 3000, "Columns": 3000,
                                                                      "NumberOfFrames": 10})
    r = client.post("/v1/predict", files={"file": ("huge.dicom", huge.read_bytes())})
    assert r.status_code == 422 and "frames=10" in r.json()["detail"]


def test_upload_limit_applies_to_streamed_bodies_without_content_length(client, artifacts):
    boundary = "cxrdetboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.dicom\"\r\n\r\n").encode()

    def body():
        yield head
        for _ in range(40):
            yield b"\0" * 65536  # 2.5 MiB in chunks, no Content-Length
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/v1/predict", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "MiB" in r.json()["detail"]
    assert post(client, artifacts["dicoms"][0]).status_code == 200


def test_malformed_requests_are_refused_with_reasons(client, artifacts):
    r = client.post("/v1/predict", content=b"raw", headers={"content-type": "application/octet-stream"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    r = client.post("/v1/predict", files={"image": ("a.dicom", artifacts["dicoms"][0].read_bytes())})
    assert r.status_code == 422 and "field 'file'" in r.json()["detail"]
    r = client.post("/v1/predict", files={"file": ("empty.dicom", b"")})
    assert r.status_code == 422 and "empty" in r.json()["detail"]


def test_nothing_is_left_in_the_temp_folder_after_responses(artifacts, tmp_path, monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    with make_client(artifacts) as c:
        assert post(c, artifacts["dicoms"][0]).status_code == 200
        assert c.post("/v1/predict", files={"file": ("x.dicom", b"not dicom")}).status_code == 422
        assert post(c, artifacts["dicoms"][0], name="../../etc/passwd").json()["image_id"] == "passwd"
    assert list(tmp.iterdir()) == []


def test_display_id_is_a_plain_name_or_upload():
    assert display_id("study0.dicom") == "study0"
    assert display_id("C:\\films\\a.DCM") == "a"
    assert display_id("../../etc/passwd") == "passwd"
    assert display_id("x; rm -rf.png") == "upload"
    assert display_id("") == "upload" and display_id("..") == "upload"


def test_token_is_required_by_the_api_but_not_by_page_and_health(artifacts):
    with make_client(artifacts, token="s3cret") as c:
        assert c.post("/v1/predict", files={"file": ("a.dicom", b"x")}).status_code == 401
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        r = post(c, artifacts["dicoms"][0], headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
        assert c.get(r.json()["display"]["image_url"]).status_code == 401
        assert c.get("/healthz").json()["token_required"] is True
        assert c.get("/").status_code == 200


def test_a_full_queue_answers_503_with_retry_after(artifacts):
    with make_client(artifacts, queue_size=2) as c:
        queue = c.app.state.queue
        queue.admitted = 2  # two requests in flight
        r = post(c, artifacts["dicoms"][0])
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1 and "busy" in r.json()["detail"]
        queue.admitted = 1
        assert post(c, artifacts["dicoms"][0]).status_code == 200
        assert queue.admitted == 1  # the served request released its slot


def test_models_health_openapi_and_local_docs(client):
    models = client.get("/v1/models").json()
    assert models["cache"] == {"size": 96, "voi": "auto"} and models["gate"]["feature_groups"] == ["detector", "metadata", "pixel"]
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["detectors"] == 1 and health["gate"] is True
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["file"]
    assert "findings" in schema["components"]["schemas"]["PredictResponse"]["properties"]
    docs = client.get("/docs").text
    assert "swagger-ui-bundle.js" in docs and "cdn" not in docs.lower() and "https://" not in docs
    js = [line for line in docs.splitlines() if "swagger-ui-bundle.js" in line][0]
    src = js.split('src="')[1].split('"')[0]
    assert client.get(src).status_code == 200  # served by the app itself
    page = client.get("/")
    assert "Content-Security-Policy" in page.headers and "https://" not in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        text = client.get(asset).text
        assert "http://" not in text and "https://" not in text


def test_a_model_failure_answers_500_json_and_the_next_request_is_served(client, artifacts, monkeypatch):
    import cxrdet.detector.predict

    real, calls = cxrdet.detector.predict.predict, []

    def fails_once(model, images):
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(model, images)

    monkeypatch.setattr(cxrdet.detector.predict, "predict", fails_once)
    r = post(client, artifacts["dicoms"][0])
    assert r.status_code == 500
    assert "the detector failed on its batch: RuntimeError: CUDA out of memory" in r.json()["detail"]
    assert post(client, artifacts["dicoms"][0]).status_code == 200


def test_queue_batches_waiting_requests_and_answers_each_its_own_result():
    import asyncio
    import threading

    from cxrdet.inference.predictor import BatchResult, ImageResult
    from cxrdet.inference.sources import Sample
    from cxrdet.serve.queue import ModelQueue, PredictionFailed

    gate_open, batches = threading.Event(), []

    class Recorder:  # stands in for the Predictor: records the batches the queue forms
        def predict(self, samples):
            batches.append([s.meta["k"] for s in samples])
            gate_open.wait(10)  # the first batch holds the model thread while others queue up
            out = BatchResult()
            for s in samples:
                if s.meta["k"] == 2:
                    out.failures.append((s.image_id, "broken on purpose"))
                else:
                    out.results.append(ImageResult(s, None, None, None, None))
            return out

    def sample(k):  # all named alike: results must still reach the right request
        return Sample("same", np.zeros((4, 4), np.uint8), (4, 4), {"k": k}, {})

    async def run():
        queue = ModelQueue(Recorder(), capacity=8, batch_size=3)
        queue.start()
        first = asyncio.ensure_future(queue.predict(sample(0)))
        await asyncio.sleep(0.2)
        rest = [asyncio.ensure_future(queue.predict(sample(k))) for k in (1, 2, 3)]
        await asyncio.sleep(0.2)
        gate_open.set()
        answers = await asyncio.gather(first, *rest, return_exceptions=True)
        await queue.stop()
        return answers

    answers = asyncio.run(run())
    assert batches == [[0], [1, 2, 3]]
    assert answers[0][0].sample.meta["k"] == 0 and answers[1][0].sample.meta["k"] == 1
    assert isinstance(answers[2], PredictionFailed) and str(answers[2]) == "broken on purpose"
    assert answers[3][0].sample.meta["k"] == 3


def test_without_a_gate_the_answer_has_no_gate_fields_and_conf_filters_findings(artifacts):
    with make_client(artifacts, gate=False, conf=0.1) as c:
        body = post(c, artifacts["dicoms"][0]).json()
        assert body["p_abnormal"] is None and body["gate_zone"] is None and body["models"]["gate"] is None
        assert body["image_level"]["p_abnormal"] is None
        tokens = body["prediction_string"].split()
        assert "14" not in tokens[::6]  # no class-14 call without a gate
        assert body["findings"] and all(f["score"] >= 0.1 for f in body["findings"])
        assert len(tokens) == 6 * len(body["findings"])
        assert len(body["display"]["items"]) > len(body["findings"])  # the page still gets every box


def test_dicom_upload_offers_its_sr_with_the_answers_boxes_and_png_does_not(client, artifacts):
    """GET /v1/results/ID/sr.dcm: the SR of `cxrdet infer --sr-dir` for a DICOM upload, holding
    the answer's findings (from min_score) and P(abnormal); a PNG upload has no source to reference."""
    import io

    import pydicom

    from cxrdet.dicomout.sr import read_sr

    body = post(client, artifacts["dicoms"][0]).json()
    assert body["downloads"]["sr"] == f"/v1/results/{body['request_id']}/sr.dcm"
    r = client.get(body["downloads"]["sr"], params={"min_score": 0})
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    back = read_sr(pydicom.dcmread(io.BytesIO(r.content)))
    source = pydicom.dcmread(artifacts["dicoms"][0], stop_before_pixels=True)
    assert back.source_sop_instance_uid == source.SOPInstanceUID
    found = sorted((f for f in body["findings"] if f["class_id"] != 14), key=lambda f: -f["score"])
    assert len(back.detections) == len(found) > 0
    np.testing.assert_allclose(back.detections.boxes, [f["box"] for f in found], atol=1e-3)
    np.testing.assert_allclose(back.detections.scores, [f["score"] for f in found], atol=1e-4)
    assert back.result.p_abnormal == pytest.approx(body["p_abnormal"], abs=1e-6)
    top = client.get(body["downloads"]["sr"], params={"min_score": 1.0})
    assert len(read_sr(pydicom.dcmread(io.BytesIO(top.content))).detections) == 0

    ok, buf = cv2.imencode(".png", (phantom(60, 50, seed=4) >> 4).astype(np.uint8))
    png = client.post("/v1/predict", files={"file": ("film.png", buf.tobytes())}).json()
    assert png["downloads"]["sr"] is None
    refused = client.get(f"/v1/results/{png['request_id']}/sr.dcm")
    assert refused.status_code == 422 and "PNG/JPEG upload" in refused.json()["detail"]


def test_classifier_probabilities_heatmaps_and_sr_match_the_batch_commands(artifacts, tmp_path):
    """serve --classifier: the answer's probabilities equal `cxrdet classify`'s for the same file,
    each listed heatmap is a PNG of the display picture's size, the SR carries the probabilities."""
    import io

    import pydicom

    from cxrdet.classes import CLASS_NAMES
    from cxrdet.dicomout.sr import read_sr
    from cxrdet.formats.probabilities import read_probabilities
    from serve_fixtures import make_classifier

    clf = make_classifier(artifacts["dir"] / "classifier")
    dicom = artifacts["dicoms"][0]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / dicom.name).write_bytes(dicom.read_bytes())
    assert cli(["classify", "--model", str(clf), "--dicom-dir", str(folder), "--workers", "0",
                "--out", str(tmp_path / "p.csv")]) == 0
    expected = read_probabilities(tmp_path / "p.csv")
    with make_client(artifacts, gate=True, classifiers=(str(clf),)) as c:
        assert c.get("/healthz").json()["classifier"] is True
        body = post(c, dicom).json()
        block = body["classifier"]
        got = [k["probability"] for k in block["classes"]]
        assert [k["class_name"] for k in block["classes"]] == expected.class_names
        np.testing.assert_allclose(got, expected.values[0], atol=2e-6)
        assert len(block["heatmaps"]) == 3 and all(h["class_name"] != "abnormal" for h in block["heatmaps"])
        top = sorted((k for k in block["classes"] if k["class_name"] != "abnormal"), key=lambda k: -k["probability"])[:3]
        assert [h["class_index"] for h in block["heatmaps"]] == [k["class_index"] for k in top]
        for h in block["heatmaps"]:
            r = c.get(h["url"])
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            pic = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
            assert pic.shape[:2] == (body["display"]["height"], body["display"]["width"])
        missing = c.get(f"/v1/results/{body['request_id']}/heatmap/99.png")
        assert missing.status_code == 404 and "no heatmap of class 99" in missing.json()["detail"]
        sr = read_sr(pydicom.dcmread(io.BytesIO(c.get(body["downloads"]["sr"]).content)))
        for k, name in enumerate(CLASS_NAMES[:14]):
            assert sr.result.classifier[k] == pytest.approx(got[k], abs=1e-4), name
        assert body["models"]["classifier"]["classes"] == expected.class_names


def test_a_classifier_evidence_gate_is_served_with_its_classifier_only(artifacts, tmp_path):
    import torch

    from cxrdet.errors import UserError
    from serve_fixtures import make_classifier

    gate = make_gate(tmp_path / "gate_clf", classifier=True)
    with pytest.raises(UserError, match="trained with classifier evidence.*--classifier"):
        load_service(ServeConfig(models=(str(artifacts["model"]),), gate=str(gate)), torch.device("cpu"))
    clf = make_classifier(artifacts["dir"] / "classifier")
    config = ServeConfig(models=(str(artifacts["model"]),), gate=str(gate), classifiers=(str(clf),))
    with TestClient(create_app(load_service(config, torch.device("cpu")))) as c:
        body = post(c, artifacts["dicoms"][1]).json()
        assert 0 <= body["p_abnormal"] <= 1 and body["models"]["gate"]["feature_groups"][0] == "classifier"
