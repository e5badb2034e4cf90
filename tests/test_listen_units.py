"""The pure parts of `cxrdet listen`: flag parsing, the C-STORE handler's answers, the restart queue."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest
from pydicom.uid import CTImageStorage, DigitalXRayImageStorageForProcessing

from cxrdet.dicomout.listen import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    SOP_CLASS_NOT_SUPPORTED,
    SUCCESS,
    StoreHandler,
    parse_forward,
)
from cxrdet.dicomout.node import NodeDirs
from cxrdet.errors import UserError


def test_parse_forward():
    assert parse_forward("pacs.local:104:PACS") == ("pacs.local", 104, "PACS")
    assert parse_forward("127.0.0.1:4242:ORTHANC") == ("127.0.0.1", 4242, "ORTHANC")
    for bad in ("pacs.local:104", "pacs:port:PACS", ":104:PACS", "h:104:", "h:104:AETITLE_LONGER_THAN_16"):
        with pytest.raises(UserError, match="HOST:PORT:AET"):
            parse_forward(bad)


def event(sop_class, uid, data=b"DICM-bytes"):
    return SimpleNamespace(request=SimpleNamespace(AffectedSOPClassUID=sop_class, AffectedSOPInstanceUID=uid),
                           encoded_dataset=lambda include_meta=True: data)


def test_store_handler_writes_before_success_and_refuses_what_it_cannot_store(tmp_path):
    queued = []
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    handler = StoreHandler(inbox, lambda uid: queued.append((uid, (inbox / f"{uid}.dcm").read_bytes())), print)
    assert handler(event(DigitalXRayImageStorageForProcessing, "1.2.3")) == SUCCESS
    assert queued == [("1.2.3", b"DICM-bytes")]  # the file was complete when the image was queued
    assert handler(event(CTImageStorage, "1.2.4")) == SOP_CLASS_NOT_SUPPORTED
    assert handler(event(DigitalXRayImageStorageForProcessing, "../escape")) == CANNOT_UNDERSTAND
    assert sorted(p.name for p in inbox.iterdir()) == ["1.2.3.dcm"] and len(queued) == 1
    os.chmod(inbox, 0o500)  # read-only inbox: the sender is told to retry later
    try:
        if not os.access(inbox, os.W_OK):  # root ignores permissions; then use a file as the inbox
            assert handler(event(DigitalXRayImageStorageForProcessing, "1.2.5")) == OUT_OF_RESOURCES
        blocked = StoreHandler(tmp_path / "inbox" / "1.2.3.dcm", queued.append, print)
        assert blocked(event(DigitalXRayImageStorageForProcessing, "1.2.6")) == OUT_OF_RESOURCES
    finally:
        os.chmod(inbox, 0o755)
    assert len(queued) == 1


def test_store_handler_answers_a_status_for_any_request_and_never_raises(tmp_path):
    queued = []
    handler = StoreHandler(tmp_path, queued.append, print)
    dx = DigitalXRayImageStorageForProcessing

    def unencodable(include_meta=True):
        raise UnicodeEncodeError("ascii", "é", 0, 1, "the file meta cannot hold it")

    assert handler(event(None, "1.2.3")) == SOP_CLASS_NOT_SUPPORTED  # no SOP Class UID in the request
    for uid in (None, "", " ", ".1.2", "1" * 65, "1.2.é", "1.2/3", "1.2.3\x00"):
        assert handler(event(dx, uid)) == CANNOT_UNDERSTAND, uid
    assert handler(SimpleNamespace(request=event(dx, "1.2.7").request, encoded_dataset=unencodable)) \
        == CANNOT_UNDERSTAND
    assert handler(event(dx, " 1.02.3 ")) == SUCCESS  # leading zeros (seen from modalities) are stored
    assert queued == ["1.02.3"] and [p.name for p in tmp_path.iterdir()] == ["1.02.3.dcm"]


def test_pending_is_received_minus_reported_oldest_first(tmp_path):
    dirs = NodeDirs(tmp_path).make()
    for i, name in enumerate(["b", "a", "c", "d", "e"]):
        path = dirs.inbox / f"{name}.dcm"
        path.write_bytes(b"x")
        os.utime(path, (time.time() + i, time.time() + i))  # arrival order b, a, c, d, e
    (dirs.inbox / ".f.123.tmp.dcm").write_bytes(b"partial")
    (dirs.sr / "c.dcm").write_bytes(b"sr")
    (dirs.failed / "d.dcm").write_bytes(b"bad")
    assert dirs.pending() == ["b", "a", "e"]


def test_a_port_in_use_is_a_usage_error(tmp_path, capsys):
    import socket

    from cxrdet.cli import main as cli
    from sr_fixtures import detector_export

    model = detector_export(tmp_path / "export")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = cli(["listen", "--port", str(port), "--model", str(model), "--out", str(tmp_path / "node"),
                  "--device", "cpu"])
    assert rc == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_worker_queues_an_image_once_until_it_is_taken(tmp_path):
    from cxrdet.dicomout.node import Worker

    dirs = NodeDirs(tmp_path).make()
    (dirs.inbox / "a.dcm").write_bytes(b"x")
    worker = Worker(dirs, pipeline=None, batch_size=4, batch_wait=0.01)
    assert worker.resume() == 1
    worker.submit("a")  # sent again while waiting: one copy
    worker.submit("b")
    assert worker._next_batch() == ["a", "b"]
    worker.submit("a")  # sent again after it was taken: processed again
    assert worker._next_batch() == ["a"] and worker._next_batch() == []
