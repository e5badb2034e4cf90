"""``cxrdet listen``: a DICOM node (C-STORE SCP) that runs cxrdet on the chest films it receives.

    cxrdet listen --ae-title CXRDET --port 11112 --model RUN/export [--gate GATE] --out node/ \
        [--forward PACS_HOST:104:PACS_AET]

- Accepts CR, DX For Presentation and DX For Processing images (uncompressed, JPEG 2000, JPEG-LS,
  JPEG lossless, RLE) and Verification (C-ECHO); any other SOP class is refused at association
  negotiation (its presentation context is rejected: abstract syntax not supported).
- Each received file is written to ``OUT/inbox/<SOP Instance UID>.dcm`` (atomically) BEFORE the
  node answers Success (0x0000); a file it cannot store is answered 0xA700 (out of resources).
- A worker thread processes queued files in batches with the code of ``cxrdet infer`` and writes
  the SR per image (:mod:`cxrdet.dicomout.node`); ``--forward`` C-STOREs each SR to another node.
- A file that cannot be processed is listed in ``OUT/listen.errors.csv`` and moved to
  ``OUT/failed/``; the node keeps running. Killed with images queued, it processes the inbox files
  that have no SR when it starts again.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import (
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    UID,
)
from pydicom.uid import JPEGLossless as JPEGLosslessP14
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    Verification,
)

from cxrdet.errors import UserError, failure_reason, safe_child
from cxrdet.formats import atomic

INTERRUPT_NOTE = ("received images are on disk in OUT/inbox; those without an SR are processed when the node "
                  "starts again")

STORAGE_CLASSES = (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                   DigitalXRayImageStorageForProcessing)
# what cxrdet's DICOM reader decodes (pydicom + pylibjpeg): nothing else is negotiated
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, JPEG2000, JPEGLSLossless,
                     JPEGLSNearLossless, JPEGLosslessSV1, JPEGLosslessP14, RLELossless]
SUCCESS, OUT_OF_RESOURCES, SOP_CLASS_NOT_SUPPORTED, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0x0122, 0xC000


def get_args_parser() -> argparse.ArgumentParser:
    from cxrdet.flags import add_device_flag
    from cxrdet.inference.tta import TTA_CHOICES

    p = argparse.ArgumentParser(
        description="DICOM C-STORE node: receives CR/DX chest films, runs the detector(s) + gate on them in "
        "batches, writes one DICOM SR per image (and the image-level CSV) and optionally forwards the SRs.")
    p.add_argument("--ae-title", default="CXRDET", help="this node's AE title (what the PACS sends to)")
    p.add_argument("--port", type=int, default=11112, help="TCP port to listen on")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                   "0.0.0.0 to accept the network)")
    p.add_argument("--model", action="append", required=True, metavar="ARTIFACT_DIR",
                   help="exported detector (RUN/export); repeat to ensemble, as in `cxrdet infer`")
    p.add_argument("--gate", help="gate folder from `cxrdet train-gate` (P(abnormal) and its decision in the SR)")
    p.add_argument("--classifier", action="append", metavar="ARTIFACT_DIR",
                   help="image-level classifier (`cxrdet train-classifier` RUN/export; repeat to average), as "
                   "`cxrdet infer --classifier`: its 14 finding probabilities go in each SR, every class in "
                   "image_level.csv (clf_<class>)")
    p.add_argument("--low", type=float, help="override the gate's stored low threshold")
    p.add_argument("--high", type=float, help="override the gate's stored high threshold")
    p.add_argument("--conf", type=float, default=0.3,
                   help="minimum score of a finding put in the SR (default 0.3: a viewer draws every region, "
                   "and the many low-score boxes that cost nothing under mAP only clutter a reading)")
    p.add_argument("--tta", choices=TTA_CHOICES, default="none", help="test-time augmentation, as `cxrdet infer --tta`")
    p.add_argument("--out", required=True, help="node folder: inbox/, sr/, failed/, image_level.csv, listen.errors.csv")
    p.add_argument("--forward", metavar="HOST:PORT:AET", help="C-STORE each SR to this node (e.g. the PACS)")
    p.add_argument("--vis-dir", help="also draw an overlay PNG per image here (<SOP Instance UID>.png), as "
                   "`cxrdet infer --vis-dir`")
    p.add_argument("--vis-conf", type=float, default=0.3, help="overlays draw boxes scoring at least this")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--batch-wait", type=float, default=0.5,
                   help="seconds to wait for more images before running a partial batch")
    add_device_flag(p, "the detectors and the gate run")
    return p


def parse_forward(text: str) -> tuple[str, int, str]:
    """``HOST:PORT:AET`` -> (host, port, AE title); UserError naming the flag otherwise."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not 1 <= len(parts[2].strip()) <= 16:
        raise UserError(f"--forward expects HOST:PORT:AET (e.g. pacs.local:104:PACS, AE title of 1-16 characters), "
                        f"got {text!r}")
    return parts[0], int(parts[1]), parts[2].strip()


def check_args(args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    if not 1 <= len(args.ae_title.strip()) <= 16:
        raise UserError(f"--ae-title must have 1-16 characters, got {args.ae_title!r}")
    if args.batch_size < 1 or args.batch_wait < 0:
        raise UserError(f"--batch-size must be >= 1 and --batch-wait >= 0, got {args.batch_size}, {args.batch_wait}")


# A SOP Instance UID becomes the inbox file name: DICOM's characters (PS3.5 9.1) and length, so
# no name is too long for the file system or hidden (a dotfile is not in the restart queue).
# Leading zeros in a component, which some modalities send, are let through.
_UID_CHARS = re.compile(r"[0-9][0-9.]{0,63}")


class StoreHandler:
    """EVT_C_STORE: write the file to the inbox, then queue it, then answer.

    Answers a DICOM status for any request and never raises: an exception out of a handler
    would make pynetdicom answer 0xC211 with no reason in the node's log.
    """

    def __init__(self, inbox: Path, submit, log) -> None:
        self.inbox, self.submit, self.log = inbox, submit, log

    def __call__(self, event) -> int:
        req = event.request
        sop_class, uid = req.AffectedSOPClassUID, req.AffectedSOPInstanceUID
        if not isinstance(sop_class, str) or UID(sop_class) not in STORAGE_CLASSES:
            return SOP_CLASS_NOT_SUPPORTED
        uid = uid.strip() if isinstance(uid, str) else ""
        if not _UID_CHARS.fullmatch(uid):
            self.log(f"refused an image: SOP Instance UID {uid[:80]!r} is not a DICOM UID (digits and dots, "
                     "at most 64 characters)")
            return CANNOT_UNDERSTAND
        try:
            path = safe_child(self.inbox, uid, ".dcm")
            data = event.encoded_dataset(include_meta=True)
        except Exception as e:  # the file meta cannot be encoded from the request: nothing to store
            self.log(f"refused image {uid}: {failure_reason(e)}")
            return CANNOT_UNDERSTAND
        try:
            atomic.write_bytes(path, data)
        except Exception as e:  # disk full, permissions: the sender keeps the image and may retry
            self.log(f"could not store {uid}: {failure_reason(e)}")
            return OUT_OF_RESOURCES
        self.submit(uid)
        return SUCCESS


def make_forwarder(target: tuple[str, int, str], ae_title: str, log):
    """``forward(paths)``: C-STORE the SR files to ``target`` over one association."""
    host, port, aet = target

    def forward(paths: list[Path]) -> None:
        ae = AE(ae_title=ae_title)
        ae.add_requested_context(ComprehensiveSRStorage, ExplicitVRLittleEndian)
        assoc = ae.associate(host, port, ae_title=aet)
        if not assoc.is_established:
            raise ConnectionError(f"association with {aet}@{host}:{port} was not established")
        try:
            for path in paths:
                status = assoc.send_c_store(dcmread(path))
                code = getattr(status, "Status", None)
                if code != SUCCESS:
                    log(f"{aet}@{host}:{port} answered status {code if code is None else hex(code)} for {path.name}")
        finally:
            assoc.release()
        log(f"forwarded {len(paths)} SR(s) to {aet}@{host}:{port}")

    return forward


def build_pipeline(args: argparse.Namespace):
    """Detectors, gate and infer's arguments (its defaults, with this command's values)."""
    import torch

    from cxrdet.device import torch_device
    from cxrdet.dicomout.node import Pipeline
    from cxrdet.inference import infer

    defaults = infer.get_args_parser().parse_args(["--model", "m", "--dicom-dir", "d", "--out", "o"])
    shared = {k: v for k, v in vars(args).items() if k in vars(defaults)}
    ns = argparse.Namespace(**{**vars(defaults), **shared})
    ns.image_level_out = "image_level.csv"  # the node always writes OUT/image_level.csv (checks only)
    infer.check_args(ns)
    device = torch_device(ns.device, torch.cuda.device_count())
    models, settings, _ = infer.load_detectors(ns.model, device)
    classifiers = infer.load_classifiers(ns.classifier, device, settings) if ns.classifier else None
    predictor = infer.build_predictor(ns, models, infer.load_gate(ns), classifiers)
    return Pipeline(predictor, settings, ns, classifiers, device)


def log(message: str) -> None:
    print(f"listen: {message}", file=sys.stderr, flush=True)


def make_ae(ae_title: str) -> AE:
    """The SCP: CR/DX storage in the transfer syntaxes cxrdet decodes, and C-ECHO."""
    ae = AE(ae_title=ae_title)
    for sop_class in STORAGE_CLASSES:
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    return ae


def main(args: argparse.Namespace) -> int:
    from cxrdet.dicomout.node import NodeDirs, Worker

    check_args(args)
    forward_to = parse_forward(args.forward) if args.forward else None
    pipeline = build_pipeline(args)
    dirs = NodeDirs(Path(args.out)).make()
    forward = make_forwarder(forward_to, args.ae_title, log) if forward_to else None
    worker = Worker(dirs, pipeline, args.batch_size, args.batch_wait, forward, log)
    handler = StoreHandler(dirs.inbox, worker.submit, log)
    resumed = worker.resume()  # before serving, so an image arriving now is not also in this list
    try:
        server = make_ae(args.ae_title).start_server((args.host, args.port), block=False,
                                                     evt_handlers=[(evt.EVT_C_STORE, handler)])
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e}); another program may hold "
                        "that port: pick another --port, or --host an address of this machine") from None
    worker.start()
    log(f"{args.ae_title} listening on {args.host}:{args.port}; {resumed} image(s) from the inbox "
        f"to process; SRs -> {dirs.sr}" + (f", forwarded to {args.forward}" if forward else ""))
    stop = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if in_main else None  # kill: finish the batch
    try:
        while not stop.wait(0.5):
            pass
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        server.shutdown()
        worker.stop()
        worker.join(timeout=600)
        log(f"stopped after {worker.processed} image(s); failures listed in {dirs.errors}")
    return 0
