"""``cxrdet infer`` (== ``python infer.py``): batch inference, plus ``--sr-dir`` for DICOM SRs.

Everything but ``--sr-dir`` is :mod:`cxrdet.inference.infer`; this module adds the flag and
injects the SR writer as the loop's per-image hook, so the inference package never imports the
DICOM output above it. With ``--sr-dir DIR`` every image that is predicted also gets
``DIR/<image_id>.dcm``, a Comprehensive SR of the submitted boxes scoring at least ``--sr-conf``
and the gate's result
(:mod:`cxrdet.dicomout.sr`); an image whose source lacks what an SR references (UIDs, PatientID)
is a listed failure (exit 3).
"""

from __future__ import annotations

import argparse

from cxrdet.errors import UserError
from cxrdet.inference import infer as base

INTERRUPT_NOTE = base.INTERRUPT_NOTE + "; SRs in --sr-dir are written one by one and those finished are kept"


def get_args_parser() -> argparse.ArgumentParser:
    p = base.get_args_parser()
    p.add_argument("--sr-dir", help="write one DICOM Comprehensive SR per image here (<image_id>.dcm: boxes as "
                   "regions, scores, the gate's P(abnormal) and decision); needs --dicom-dir, whose headers "
                   "supply the patient, study and image references")
    p.add_argument("--sr-conf", type=float, default=0.3,
                   help="findings scoring at least this go in the SRs (SRs only, like --vis-conf for overlays; "
                   "--conf also applies; default 0.3: viewers draw every region)")
    return p


def main(args: argparse.Namespace) -> int:
    if not getattr(args, "sr_dir", None):
        return base.main(args)
    if not 0 <= args.sr_conf <= 1:
        raise UserError(f"--sr-conf is a minimum score in [0, 1], got {args.sr_conf}")
    if not args.dicom_dir:
        source = "--cache" if args.cache else "--png-dir"
        raise UserError(f"--sr-dir needs --dicom-dir: an SR references the source DICOM image (its study, series "
                        f"and SOP instance UIDs, its patient), and {source} input has none; run infer on the "
                        "DICOM folder instead")
    return base.main(args, record_hook=lambda source, gate: _writer(args, source, gate))


def _writer(args: argparse.Namespace, source, gate):
    from cxrdet.dicomout.writer import SRWriter

    low, high = (gate.low, gate.high) if gate else (None, None)
    writer = SRWriter(args.sr_dir, source.paths, low, high, min_score=args.sr_conf)
    writer.check_names(source.ids)
    return writer
