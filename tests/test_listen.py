"""`cxrdet listen` against real peers on 127.0.0.1: dcmtk's storescu sends a study, the node
writes the SRs and forwards them to a dcmtk storescp started by the test; an unsupported SOP
class is refused; a corrupt image does not stop the node; a killed node finishes its inbox when
it starts again. Every process is started and stopped by the test, every wait is bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import ComputedRadiographyImageStorage, CTImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import (
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    Verification,
)

from dicom_fixtures import phantom
from sr_fixtures import dcmtk, detector_export, free_port, write_study

from cxrdet.dicomio.write import write_dicom
from cxrdet.dicomout.sr import read_sr

pytestmark = pytest.mark.slow
DEADLINE = 180  # seconds any one wait may take on a loaded 2-core machine


def wait_for(check, what: str, timeout: float = DEADLINE, procs=()):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: process {p.args[:4]} exited with {p.returncode}:\n{_output(p)}")
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _output(p) -> str:
    return Path(p.log_path).read_text() if getattr(p, "log_path", None) else ""


def echo_ok(port: int, aet: str = "CXRDET") -> bool:
    ae = AE(ae_title="TEST")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return getattr(status, "Status", None) == 0


class Node:
    """`python -m cxrdet listen ...` in a subprocess, output to a log file."""

    def __init__(self, tmp: Path, model: Path, out: Path, *extra: str):
        self.port = free_port()
        log_path = tmp / f"listen_{self.port}.log"
        self.log = open(log_path, "w")
        cmd = [sys.executable, "-m", "cxrdet", "listen", "--ae-title", "CXRDET", "--port", str(self.port),
               "--model", str(model), "--out", str(out), "--device", "cpu", "--batch-size", "2",
               "--batch-wait", "0.3", "--conf", "0", *extra]  # conf 0: the untrained detector scores low
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, text=True, env=env)
        self.proc.log_path = log_path
        wait_for(lambda: echo_ok(self.port), "the node to answer C-ECHO", procs=[self.proc])

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return detector_export(tmp_path_factory.mktemp("det") / "export")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """DX For Presentation, CR, and DX For Processing: the three storage classes the node takes."""
    folder = tmp_path_factory.mktemp("study")
    paths = write_study(folder, n=3)
    ds = pydicom.dcmread(paths["img2"])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForProcessing
    ds.PresentationIntentType = "FOR PROCESSING"
    ds.save_as(paths["img2"])
    return paths


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """dcmtk storescp accepting every SOP class and transfer syntax, into a fresh folder.

    storescp writes each file in place while it receives it, so a poll can meet a half-written
    file; it touches ``.<file>.done`` once a file is complete, and the test reads only those.
    """
    folder = tmp_path_factory.mktemp("pacs")
    port = free_port()
    proc = subprocess.Popen([dcmtk("storescp"), "--accept-all", "--promiscuous", "--aetitle", "PACS",
                             "--output-directory", str(folder),
                             "--exec-on-reception", 'touch "#p/.#f.done"', str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: echo_ok(port, "PACS"), "storescp to answer C-ECHO", timeout=60)
    yield {"dir": folder, "port": port}
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def node(tmp_path_factory, model, pacs):
    tmp = tmp_path_factory.mktemp("node")
    n = Node(tmp, model, tmp / "out", "--forward", f"127.0.0.1:{pacs['port']}:PACS", "--vis-dir", str(tmp / "vis"))
    n.vis = tmp / "vis"
    n.out = tmp / "out"
    yield n
    assert n.stop() == 0, _output(n.proc)


def storescu(port: int, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([dcmtk("storescu"), "-aec", "CXRDET", "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def received_srs(folder: Path) -> dict[str, pydicom.Dataset]:
    """Complete SRs in storescp's folder, by the SOP Instance UID of the image they report on."""
    out = {}
    for done in folder.glob(".*.done"):
        path = folder / done.name[1:-len(".done")]
        if path.is_file():
            ds = pydicom.dcmread(path)
            out[read_sr(ds).source_sop_instance_uid] = ds
    return out


def test_study_sent_by_storescu_comes_back_as_srs_at_the_pacs(node, study, pacs):
    sent = storescu(node.port, *study.values())
    assert sent.returncode == 0, sent.stderr
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in study.values()}
    # the images were on disk before the node said success
    assert {p.stem for p in (node.out / "inbox").glob("*.dcm")} >= uids
    srs = wait_for(lambda: (lambda r: r if set(r) >= uids else None)(received_srs(pacs["dir"])),
                   "3 SRs at storescp", procs=[node.proc])
    for uid in uids:
        forwarded = read_sr(srs[uid])
        local = read_sr(pydicom.dcmread(node.out / "sr" / f"{uid}.dcm"))
        assert forwarded.study_instance_uid == srs[uid].StudyInstanceUID == pydicom.dcmread(
            next(p for p in study.values() if pydicom.dcmread(p).SOPInstanceUID == uid)).StudyInstanceUID
        assert len(forwarded.detections) == len(local.detections) > 0
        assert forwarded.detections.boxes.tolist() == local.detections.boxes.tolist()
    assert {read_sr(srs[u]).source_sop_class_uid for u in uids} == {
        DigitalXRayImageStorageForPresentation, ComputedRadiographyImageStorage, DigitalXRayImageStorageForProcessing}
    rows = pd.read_csv(node.out / "image_level.csv", dtype={"image_id": str})
    assert set(rows["image_id"]) >= uids and rows["image_id"].is_unique
    assert {p.stem for p in node.vis.glob("*.png")} >= uids  # a picture of each


def test_unsupported_sop_class_is_refused(node, tmp_path):
    ct = write_dicom(tmp_path / "ct.dcm", phantom(40, 40), sop_instance_uid="1.2.3.4.5.6.7.8.9")
    ds = pydicom.dcmread(ct)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.save_as(ct)
    sent = storescu(node.port, ct)
    assert sent.returncode != 0
    assert "No presentation context" in sent.stdout + sent.stderr
    assert not (node.out / "inbox" / "1.2.3.4.5.6.7.8.9.dcm").exists()
    # pynetdicom as the SCU: the CT context is rejected at negotiation, the DX one accepted
    ae = AE(ae_title="TEST")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CXRDET")
    assert assoc.is_established
    accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
    rejected = {str(c.abstract_syntax) for c in assoc.rejected_contexts}
    assoc.release()
    assert accepted == {DigitalXRayImageStorageForPresentation} and rejected == {CTImageStorage}


def test_corrupt_image_is_listed_and_the_node_keeps_working(node, tmp_path):
    bad = write_dicom(tmp_path / "bad.dcm", phantom(60, 50), sop_instance_uid="1.2.3.99.1")
    ds = pydicom.dcmread(bad)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # truncated pixels: stored, not decodable
    ds.save_as(bad)
    good = write_dicom(tmp_path / "good.dcm", phantom(64, 56, seed=7), sop_instance_uid="1.2.3.99.2")
    assert storescu(node.port, bad).returncode == 0  # received and stored: the failure comes later
    assert storescu(node.port, good).returncode == 0
    wait_for(lambda: (node.out / "sr" / "1.2.3.99.2.dcm").exists(), "the SR of the good image", procs=[node.proc])
    errors = wait_for(lambda: _errors(node.out), "the errors CSV row", procs=[node.proc])
    assert "pixel data cannot be decoded" in errors["1.2.3.99.1"]
    assert (node.out / "failed" / "1.2.3.99.1.dcm").exists() and not (node.out / "sr" / "1.2.3.99.1.dcm").exists()
    assert node.proc.poll() is None


def _errors(out: Path) -> dict | None:
    path = out / "listen.errors.csv"
    if not path.exists():
        return None
    df = pd.read_csv(path, dtype=str)
    return dict(zip(df["item"], df["reason"])) or None


def test_killed_node_loses_nothing_and_restart_finishes_the_inbox(tmp_path, model, study):
    out = tmp_path / "out"
    node = Node(tmp_path, model, out, "--batch-size", "1")
    try:
        assert storescu(node.port, *study.values()).returncode == 0
    finally:
        node.stop(signal.SIGKILL)  # no clean-up at all, whatever was queued
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in study.values()}
    assert {p.stem for p in (out / "inbox").glob("*.dcm") if not p.name.startswith(".")} == uids
    # a file received while the node was down (written straight into the inbox, no SR yet) and an
    # interrupted write (hidden temp name) that must be ignored
    late = write_dicom(out / "inbox" / "1.2.3.77.1.dcm", phantom(70, 60, seed=3), sop_instance_uid="1.2.3.77.1")
    (out / "inbox" / ".1.2.3.77.2.x.tmp.dcm").write_bytes(b"half a file")
    expected = uids | {late.stem}
    again = Node(tmp_path, model, out)
    try:
        wait_for(lambda: all((out / "sr" / f"{u}.dcm").exists() for u in expected), "every SR after the restart",
                 procs=[again.proc])
    finally:
        assert again.stop() == 0
    # (a kill can leave a hidden temp file of an unfinished atomic write: not an SR)
    assert {p.stem for p in (out / "sr").glob("*.dcm") if not p.name.startswith(".")} == expected
    rows = pd.read_csv(out / "image_level.csv", dtype={"image_id": str})
    assert sorted(rows["image_id"]) == sorted(expected)  # one row each, none twice
    assert _errors(out) is None


@pytest.mark.slow
def test_node_with_a_classifier_puts_its_probabilities_in_the_srs(tmp_path, model, study):
    """listen --classifier: every SR holds the 14 findings' classifier probabilities, equal to the
    clf_* columns the node writes in image_level.csv."""
    from classifier_fixtures import make_vinbig, train_args

    from cxrdet.classes import CLASS_NAMES, NUM_FINDINGS
    from cxrdet.cli import main as cli
    from cxrdet.formats.image_level import classifier_column

    run = tmp_path / "clf"
    assert cli(train_args(make_vinbig(tmp_path / "clfdata", n=24), run, "--epochs", "1")) == 0
    out = tmp_path / "out"
    node = Node(tmp_path, model, out, "--classifier", str(run / "export"))
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in study.values()}
    try:
        assert storescu(node.port, *study.values()).returncode == 0
        wait_for(lambda: all((out / "sr" / f"{u}.dcm").exists() for u in uids), "every SR", procs=[node.proc])
    finally:
        assert node.stop() == 0
    rows = pd.read_csv(out / "image_level.csv", dtype={"image_id": str}).set_index("image_id")
    assert classifier_column("abnormal") in rows.columns
    for uid in uids:
        probs = read_sr(pydicom.dcmread(out / "sr" / f"{uid}.dcm")).result.classifier
        expected = [rows.loc[uid, classifier_column(CLASS_NAMES[k])] for k in range(NUM_FINDINGS)]
        np.testing.assert_allclose([probs[k] for k in range(NUM_FINDINGS)], expected, atol=1e-5)
