"""Fuzz targets of the two network services, which take files from other machines:

- ``serve``: ``POST /v1/predict`` of ``cxrdet serve`` (FastAPI TestClient, in process) with a
  tiny detector and a gate. A mutated DICOM/PNG/JPEG is sent as the multipart field ``file``;
  sometimes a whole multipart body is mutated instead. Every answer must be 200 with a valid
  prediction or a 4xx JSON ``{"detail": reason}`` that shows no server path; a 5xx (or an
  exception out of the app) escapes.
- ``listen``: what the ``cxrdet listen`` node receives in a C-STORE: the dataset bytes (as
  pynetdicom hands them over, without file meta), the request's SOP Class / Instance UIDs and
  the negotiated transfer syntax, through a real :class:`pynetdicom.events.Event` to the node's
  :class:`StoreHandler`. It must answer a DICOM status and never raise; a stored file is then
  processed by the node's worker (tiny detector + gate), which must write its SR or list it as
  failed with a reason of ours (not a foreign exception's type).

Both answer "refused" through :class:`Refused` (a 4xx, a non-success status, a listed failure).
"""

from __future__ import annotations

import functools
import io
import json
import re
import struct
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from fuzz_core import Target, workdir
from fuzz_images import dicom_dataset_edit, dicom_seeds, dicom_strategy, dicom_tag_edit, image_seeds, image_strategy
from fuzz_strategies import mutated_bytes


class Refused(Exception):
    """The service said no the way it should: a 4xx JSON reason, a DICOM failure status, a listed failure."""


# a reason that is only a foreign exception's type and message, as failure_reason shows a bug
FOREIGN = re.compile(r"^(processing failed: )?[A-Za-z_][\w.]*(Error|Exception|Warning|Interrupt)\b(:|$)")


@functools.lru_cache(maxsize=None)
def _models() -> tuple[Path, Path]:
    """A tiny detector artifact and gate, made once per process."""
    from serve_fixtures import make_artifact, make_gate
    from sr_fixtures import limit_threads

    limit_threads()
    root = workdir() / "service_models"
    return make_artifact(root / "export"), make_gate(root / "gate")


# ------------------------------------------------------------------------------ cxrdet serve
RAW = b"RAW multipart\n"  # marks a blob that is a whole (mutated) multipart body, not a file
BOUNDARY = "cxrdetfuzzboundary"


@functools.lru_cache(maxsize=None)
def serve_client():
    """A TestClient of an app around the tiny models, started (lifespan) and kept for the process."""
    import torch
    from fastapi.testclient import TestClient

    from cxrdet.serve.app import create_app
    from cxrdet.serve.service import ServeConfig, load_service

    model, gate = _models()
    config = ServeConfig(models=(str(model),), gate=str(gate), max_upload_mb=1.0, max_pixels=4_000_000)
    client = TestClient(create_app(load_service(config, torch.device("cpu"))))
    client.__enter__()  # runs the lifespan: the model queue's threads
    return client


def _multipart(data: bytes, name: str = "study.dcm") -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def _serve_strategy() -> st.SearchStrategy[bytes]:
    files = st.one_of(dicom_strategy(), image_strategy())
    seeds = st.sampled_from(dicom_seeds()[:2] + image_seeds()[:1])
    bodies = seeds.map(_multipart).flatmap(lambda body: mutated_bytes(body, max_edits=3)).map(lambda b: RAW + b)
    return st.one_of(files, files, bodies)


def _post(path: Path) -> dict:
    data = path.read_bytes()
    client = serve_client()
    if data.startswith(RAW):
        r = client.post("/v1/predict", content=data[len(RAW):],
                        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    else:
        r = client.post("/v1/predict", files={"file": ("study.dcm", data)})
    _refusal(r)
    body = r.json()
    # what the page fetches next: the overlay, and the SR of a DICOM upload (built from its header)
    for url in body["downloads"].values():
        if url is not None:
            got = client.get(url)
            if got.status_code != 200:
                _refusal(got)
            body.setdefault("fetched", {})[url.rsplit("/", 1)[-1]] = got
    return body


def _refusal(r) -> None:
    """Nothing for a 200; Refused for a 4xx JSON reason; an escape for anything else."""
    if r.status_code == 200:
        return
    detail = r.json().get("detail") if r.headers.get("content-type", "").startswith("application/json") else None
    if 400 <= r.status_code < 500 and isinstance(detail, str) and detail:
        if "cxrdet-serve-" in detail or str(workdir()) in detail:  # the private upload folder leaked
            raise AssertionError(f"HTTP {r.status_code} names a server path: {detail}")
        raise Refused(f"HTTP {r.status_code}: {detail}")
    raise RuntimeError(f"HTTP {r.status_code} {r.headers.get('content-type')}: {r.text[:300]}")


def _check_answer(body: dict) -> None:
    from cxrdet.formats.submission import parse_prediction_string

    assert body["width"] >= 1 and body["height"] >= 1, body
    for f in body["findings"]:
        box = np.asarray(f["box"], dtype=np.float64)
        assert 0 <= f["class_id"] <= 13 and 0 <= f["score"] <= 1 and np.isfinite(box).all(), f
        assert box[2] > box[0] and box[3] > box[1] and box.min() >= 0, f
        assert box[2] <= body["width"] and box[3] <= body["height"], (f, body["width"], body["height"])
    parse_prediction_string(body["prediction_string"])  # exactly what infer writes: it must read back
    p = body["p_abnormal"]
    assert p is None or 0 <= p <= 1, p
    fetched = body.get("fetched", {})
    if "overlay.png" in fetched:
        assert fetched["overlay.png"].content.startswith(b"\x89PNG"), fetched["overlay.png"].content[:8]
    if "sr.dcm" in fetched and fetched["sr.dcm"].status_code == 200:
        import pydicom

        from cxrdet.dicomout.sr import read_sr

        back = read_sr(pydicom.dcmread(io.BytesIO(fetched["sr.dcm"].content)))
        assert len(back.detections) == sum(f["score"] >= 0.3 for f in body["findings"]), back.detections


def _serve() -> Target:
    def valid() -> list[bytes]:
        return dicom_seeds() + image_seeds()[:2]

    return Target("serve", "upload.bin", _serve_strategy, _post, _check_answer, allowed=(Refused,), valid=valid)


# ------------------------------------------------------------------------------ cxrdet listen
def split_file_meta(data: bytes) -> tuple[dict, bytes]:
    """A Part 10 file -> (its file meta UIDs, the dataset bytes a C-STORE carries)."""
    import pydicom

    meta_length = struct.unpack("<I", data[140:144])[0]  # (0002,0000) UL: the group's length
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    return ({"sop_class": str(meta.MediaStorageSOPClassUID), "uid": str(meta.MediaStorageSOPInstanceUID),
             "syntax": str(meta.TransferSyntaxUID)}, data[144 + meta_length:])


def _received(meta: dict, dataset: bytes) -> bytes:
    """One blob: the request's UIDs and transfer syntax as a JSON line, then the dataset bytes."""
    return json.dumps(meta).encode() + b"\n" + dataset


@functools.lru_cache(maxsize=None)
def listen_seeds() -> list[bytes]:
    return [_received(*split_file_meta(s)) for s in dicom_seeds()]


def _dataset_of(data: bytes) -> bytes:
    """The dataset part of a re-encoded file (the file itself if its meta no longer parses)."""
    try:
        return split_file_meta(data)[1]
    except Exception:  # the edit broke the file meta: send what there is
        return data


def _datasets(seed: bytes) -> st.SearchStrategy[bytes]:
    """The seed's dataset bytes broken as the DICOM target breaks files."""
    dataset = split_file_meta(seed)[1]
    return st.one_of(mutated_bytes(dataset), dicom_tag_edit(dataset),
                     dicom_tag_edit(dataset).flatmap(mutated_bytes), dicom_dataset_edit(seed).map(_dataset_of))


def _request_edit(meta: dict) -> st.SearchStrategy[dict]:
    """The request's UIDs or transfer syntax changed: odd instance UIDs, other or no SOP classes,
    another negotiated syntax than the dataset's (a sender may encode it wrongly)."""
    from pydicom.uid import CTImageStorage, ComputedRadiographyImageStorage, DigitalXRayImageStorageForProcessing

    from cxrdet.dicomout.listen import TRANSFER_SYNTAXES

    uids = st.one_of(st.sampled_from(["", " ", "../escape", "a/b", "1.2.3\x00", "1.2.é", "." * 64, "1" * 300,
                                      "None", ".hidden", "1.02.3", meta["uid"] + " "]), st.text(max_size=12), st.none())
    classes = st.sampled_from([str(ComputedRadiographyImageStorage), str(DigitalXRayImageStorageForProcessing),
                               str(CTImageStorage), "", "1.2.3", "not a uid", "\x00", None])
    syntaxes = st.sampled_from([str(t) for t in TRANSFER_SYNTAXES])
    key = st.sampled_from(["uid", "sop_class", "syntax"])
    return st.tuples(key, uids, classes, syntaxes).map(
        lambda t: {**meta, t[0]: {"uid": t[1], "sop_class": t[2], "syntax": t[3]}[t[0]]})


@st.composite
def _received_from(draw, seed: bytes) -> bytes:
    """A seed as a C-STORE: its dataset broken (mostly), its request edited, or both."""
    meta, dataset = split_file_meta(seed)
    kind = draw(st.sampled_from(["dataset", "dataset", "dataset", "request", "both"]))
    if kind != "request":
        dataset = draw(_datasets(seed))
    if kind != "dataset":
        meta = draw(_request_edit(meta))
    return _received(meta, dataset)


def _listen_strategy() -> st.SearchStrategy[bytes]:
    return st.sampled_from(dicom_seeds()).flatmap(_received_from)


@functools.lru_cache(maxsize=None)
def listen_node():
    """The node's worker (tiny detector + gate, `cxrdet listen`'s own pipeline) and its folders."""
    from cxrdet.dicomout.listen import build_pipeline, get_args_parser
    from cxrdet.dicomout.node import NodeDirs, Worker

    model, gate = _models()
    out = workdir() / "listen_node"
    args = get_args_parser().parse_args(["--model", str(model), "--gate", str(gate), "--out", str(out),
                                         "--device", "cpu", "--conf", "0"])
    dirs = NodeDirs(out).make()
    return Worker(dirs, build_pipeline(args), batch_size=1, batch_wait=0.0, log=lambda message: None)


def _store_event(meta: dict, dataset: bytes):
    from pynetdicom import evt
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.presentation import PresentationContextTuple

    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = meta["sop_class"]
    req.AffectedSOPInstanceUID = meta["uid"]
    req.DataSet = io.BytesIO(dataset)
    context = PresentationContextTuple(1, meta["sop_class"], meta["syntax"])
    return evt.Event(None, evt.EVT_C_STORE, {"request": req, "context": context})


def _receive(path: Path) -> str:
    """C-STORE the blob to the node's handler, then let its worker process what was stored."""
    from cxrdet.dicomout.listen import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SOP_CLASS_NOT_SUPPORTED, SUCCESS
    from cxrdet.dicomout.listen import StoreHandler

    head, _, dataset = path.read_bytes().partition(b"\n")
    meta = json.loads(head)
    try:
        event = _store_event(meta, dataset)
    except ValueError as e:  # pynetdicom's primitive refuses such a UID: the handler never sees the request
        raise Refused(f"not deliverable: {e}") from None
    worker = listen_node()
    submitted: list[str] = []
    status = StoreHandler(worker.dirs.inbox, submitted.append, lambda message: None)(event)
    assert status in (SUCCESS, OUT_OF_RESOURCES, SOP_CLASS_NOT_SUPPORTED, CANNOT_UNDERSTAND), status
    if status != SUCCESS:
        assert not submitted, submitted
        raise Refused(f"status 0x{status:04X}")
    assert len(submitted) == 1, submitted
    return _process(worker, submitted[0])


def _process(worker, uid: str) -> str:
    """What the worker made of one stored image: "sr" or a Refused with its listed reason."""
    import pydicom

    from cxrdet.dicomout.writer import sr_path

    sr = sr_path(worker.dirs.sr, uid)
    sr.unlink(missing_ok=True)  # an earlier example may have stored the same SOP Instance UID
    (worker.dirs.failed / f"{uid}.dcm").unlink(missing_ok=True)
    before = len(worker.failures.rows)
    worker.process([uid])
    failed = [reason for image_id, reason in worker.failures.rows[before:] if image_id == uid]
    if failed:
        if FOREIGN.match(failed[0]):
            raise RuntimeError(f"the node listed {uid!r} with a foreign error: {failed[0]}")
        raise Refused(failed[0])
    pydicom.dcmread(sr)  # a written SR must read back
    return "sr"


def _listen() -> Target:
    return Target("listen", "received.bin", _listen_strategy, _receive, allowed=(Refused,), valid=listen_seeds)


def close() -> None:
    """Stop the app's lifespan (its model queue threads) if a client was started."""
    if serve_client.cache_info().currsize:
        serve_client().__exit__(None, None, None)
        serve_client.cache_clear()


TARGET_FACTORIES = {"serve": _serve, "listen": _listen}
