"""``cxrdet serve``: a web page and an HTTP API for one study at a time (FastAPI + uvicorn).

The models load once at start-up through the code of ``cxrdet infer`` and every upload is
preprocessed and predicted by that same code (:class:`cxrdet.inference.predictor.Predictor`),
so the API answers exactly what the batch command writes. Binds 127.0.0.1 unless told
otherwise; ``--token`` (or the environment variable CXRDET_TOKEN) then guards ``/v1/*``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from cxrdet.errors import UserError
from cxrdet.flags import add_device_flag
from cxrdet.serve.service import ServeConfig

INTERRUPT_NOTE = "the server stopped; it keeps nothing on disk (uploads live in per-request temp folders)"
TOKEN_ENV = "CXRDET_TOKEN"
ALL_INTERFACES = {"0.0.0.0", "::", "", "[::]"}


def get_args_parser() -> argparse.ArgumentParser:
    d = ServeConfig(models=())
    p = argparse.ArgumentParser(
        description="Serve the detector(s) + gate: a web page at / and an HTTP API (POST /v1/predict, "
        "GET /v1/models, /healthz, OpenAPI at /docs) predicting exactly as `cxrdet infer`.")
    p.add_argument("--model", action="append", metavar="ARTIFACT_DIR",
                   help="exported detector (RUN/export: model.pt + config.json); repeat to ensemble (WBF)")
    p.add_argument("--gate", help="gate folder (gate.ubj + gate_schema.json from `cxrdet train-gate`)")
    p.add_argument("--classifier", action="append", metavar="ARTIFACT_DIR",
                   help="image-level classifier (`cxrdet train-classifier` RUN/export; repeat to average): its "
                   "probability table and Grad-CAM heatmaps on the page and in the answer; needed by a gate "
                   "trained with classifier evidence")
    p.add_argument("--cam-classes", default=d.cam_classes, metavar="top3|all|ID,...",
                   help="heatmaps per image with --classifier, as `cxrdet classify --cam-classes` (default: %(default)s)")
    p.add_argument("--rescore", choices=("auto", "none", "classifier"), default=d.rescore,
                   help="as `cxrdet infer --rescore` (default auto: the gate's out-of-fold decision)")
    p.add_argument("--demo-dir", help="serve the artifacts of a `cxrdet demo` run (its detector/export and gate/, "
                   "with the TTA and overlay score its infer used, from DIR/commands.txt); e.g. data/demo")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    add_device_flag(p, "the detectors and the gate run")
    p.add_argument("--tta", choices=("none", "hflip"), help="test-time augmentation, as `cxrdet infer --tta` "
                   "(default none; hflip with --demo-dir)")
    p.add_argument("--conf", type=float, help="minimum score of a finding in the answer, as `cxrdet infer --conf` "
                   "(default: keep all)")
    p.add_argument("--vis-conf", type=float, help=f"start of the page's score slider and the overlay PNG's "
                   f"default (default {d.min_score}; the demo's with --demo-dir)")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb, help="largest upload accepted (413 above)")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help="largest declared Rows x Columns x frames accepted, checked before decoding")
    p.add_argument("--queue-size", type=int, default=d.queue_size,
                   help="requests admitted at once; more get 503 + Retry-After (bounds memory)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="waiting requests the model may batch (1: an answer never depends on other requests)")
    p.add_argument("--workers", type=int, default=d.decode_workers, help="threads decoding uploads")
    p.add_argument("--token", help=f"require 'Authorization: Bearer TOKEN' on /v1/* (default: ${TOKEN_ENV} if "
                   "set; prefer the variable, a flag shows in the process list)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return p


def demo_artifacts(demo_dir: str) -> tuple[list[str], str, str | None, float | None, list[str]]:
    """(models, gate, tta, vis conf, classifiers) of a `cxrdet demo` run folder.

    When the demo trained a classifier, it is served with the gate that uses its evidence
    (DIR/gate_clf), as the demo's stacked-gate run predicted.

    TTA and overlay score are those of the demo's own test-set `cxrdet infer` line in
    DIR/commands.txt (None when it cannot be read), so the page shows what the demo's overlays do.
    """
    root = Path(demo_dir)
    model, gate = root / "detector" / "export", root / "gate"
    missing = [str(p) for p in (model / "model.pt", gate) if not p.exists()]
    if missing:
        raise UserError(f"--demo-dir {root}: expected the artifacts of `cxrdet demo --out {root}`, missing "
                        f"{', '.join(missing)}; run `cxrdet demo` first (or pass --model/--gate)")
    tta, vis = None, None
    commands = root / "commands.txt"
    lines = commands.read_text().splitlines() if commands.is_file() else []
    for line in lines:
        argv = shlex.split(line)
        if argv[:2] == ["cxrdet", "infer"] and "--gate" in argv:  # the test-set run, with the gate
            tta = _flag_value(argv, ("--tta",)) or tta
            vis_text = _flag_value(argv, ("--vis-conf", "--vis-min-score"))
            vis = float(vis_text) if vis_text is not None else vis
    classifier = root / "classifier" / "export"
    if (classifier / "model.pt").is_file() and (root / "gate_clf").is_dir():
        return [str(model)], str(root / "gate_clf"), tta, vis, [str(classifier)]
    return [str(model)], str(gate), tta, vis, []


def _flag_value(argv: list[str], names: tuple[str, ...]) -> str | None:
    for k, a in enumerate(argv[:-1]):
        if a in names:
            return argv[k + 1]
    return None


def build_config(args: argparse.Namespace) -> ServeConfig:
    models, gate, tta, vis = list(args.model or []), args.gate, args.tta, args.vis_conf
    classifiers = list(args.classifier or [])
    if args.demo_dir:
        if models or gate or classifiers:
            raise UserError("--demo-dir picks the demo's detector, gate and classifier: pass either it or "
                            "--model/--gate/--classifier")
        models, gate, demo_tta, demo_vis, classifiers = demo_artifacts(args.demo_dir)
        tta = tta or demo_tta
        vis = demo_vis if vis is None else vis
    if not models:
        raise UserError("nothing to serve: pass --model RUN/export (repeatable) or --demo-dir DEMO_OUT")
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    for name, value in (("--queue-size", args.queue_size), ("--batch-size", args.batch_size),
                        ("--workers", args.workers), ("--max-pixels", args.max_pixels)):
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    if args.max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    for name, value in (("--conf", args.conf), ("--vis-conf", vis)):
        if value is not None and not 0 <= value <= 1:
            raise UserError(f"{name} is a score in [0, 1], got {value}")
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    return ServeConfig(models=tuple(models), gate=gate, classifiers=tuple(classifiers), cam_classes=args.cam_classes,
                       rescore=args.rescore,
                       device=args.device, tta=tta or "none", conf=args.conf,
                       max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, queue_size=args.queue_size,
                       batch_size=args.batch_size, decode_workers=args.workers, token=token,
                       min_score=ServeConfig.min_score if vis is None else vis)


def log(message: str) -> None:
    print(f"serve: {message}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from cxrdet.device import torch_device
    from cxrdet.serve.app import create_app
    from cxrdet.serve.service import load_service

    config = build_config(args)
    device = torch_device(config.device, torch.cuda.device_count())
    service = load_service(config, device)
    app = create_app(service)
    log(f"{len(config.models)} detector(s){' + gate' if config.gate else ''}"
        f"{' + classifier' if config.classifiers else ''}, tta={config.tta}, device {device}, "
        f"queue {config.queue_size}, uploads <= {config.max_upload_mb:g} MiB")
    if args.host in ALL_INTERFACES:
        log(f"WARNING: bound to all interfaces ({args.host or '*'}): anyone who can reach this machine can upload "
            "images and read the answers" + ("" if config.token else f"; set {TOKEN_ENV} (or --token) to require a "
                                             "token") + ", and put TLS in front of it")
    log(f"page: http://{'localhost' if args.host in ALL_INTERFACES else args.host}:{args.port}/  API docs: /docs")
    # connections beyond a few times the queue get uvicorn's own 503: sockets stay bounded too
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                limit_concurrency=4 * config.queue_size + 16, timeout_keep_alive=5)
    return 0
