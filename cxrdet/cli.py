"""The ``cxrdet`` console script: one subcommand per pipeline stage.

Each subcommand lives in its own module exposing ``get_args_parser()`` and ``main(args) -> int``
(torchvision references style). Modules are imported only when their command runs, so light
commands such as ``evaluate`` never import torch.
"""

from __future__ import annotations

import importlib
import sys

from cxrdet.errors import EXIT_USAGE, UserError

# name -> (module, one-line help). Order is the order of the pipeline.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("cxrdet.synth.command", "write synthetic VinBigData-like DICOMs and label CSVs"),
    "prepare": ("cxrdet.preprocess.prepare", "DICOM folder -> HDF5 cache + metadata/feature CSVs"),
    "merge-cache": ("cxrdet.preprocess.merge", "combine shard caches into one HDF5 cache"),
    "split": ("cxrdet.split", "multilabel-stratified K-fold split of a label CSV"),
    "train": ("cxrdet.detector.train", "train the Faster R-CNN detector (Lightning, DDP)"),
    "val": ("cxrdet.validate", "score a trained detector on its validation fold (no training)"),
    "train-classifier": ("cxrdet.classifier.train", "train an image-level classifier (multi-label or multi-class)"),
    "train-gate": ("cxrdet.gate.train", "train the XGBoost normal/abnormal gate"),
    "infer": ("cxrdet.dicomout.infer_command", "batch inference -> submission CSV (+ overlays, DICOM SRs)"),
    "merge-submissions": ("cxrdet.inference.merge", "combine shard submissions into one CSV"),
    "classify": ("cxrdet.inference.classify", "image-level class probabilities from trained classifier(s)"),
    "merge-probabilities": ("cxrdet.inference.merge_probabilities", "combine shard probability CSVs of classify"),
    "listen": ("cxrdet.dicomout.listen", "DICOM node: receive CR/DX images, write an SR each (+ forward)"),
    "serve": ("cxrdet.serve.command", "web page + HTTP API for one image at a time (same code as infer)"),
    "evaluate": ("cxrdet.evaluate", "score a submission with the competition's mAP@0.4"),
    "evaluate-classifier": ("cxrdet.classifier.evaluate", "score a probability CSV (AUROC with CI, calibration, ...)"),
    "export-labels": ("cxrdet.ecosystem.export_labels", "fused training boxes + fold split as COCO or YOLO"),
    "fuse": ("cxrdet.ecosystem.fuse", "fuse submissions of any framework (WBF, NMS, soft-NMS)"),
    "export-onnx": ("cxrdet.ecosystem.onnx_export", "detector artifact -> ONNX file (onnxruntime on CPU)"),
    "demo": ("cxrdet.demo", "the whole pipeline end to end on synthetic data"),
}


# What Ctrl-C leaves behind differs per command. A command module says so in INTERRUPT_NOTE;
# these are the notes of command modules that do not define one.
INTERRUPT_NOTES: dict[str, str] = {
    "cxrdet.preprocess.prepare": "finished images are kept in the partial cache and a rerun of the same "
                                 "command resumes",
    "cxrdet.detector.train": "checkpoints written so far are kept (RUN/checkpoints/last.ckpt at each epoch end); "
                             "rerun with --resume to continue",
}
DEFAULT_INTERRUPT_NOTE = "outputs of this run may be missing or incomplete; rerun the command"


def interrupt_note(module) -> str:
    """What an interrupted run of ``module``'s command leaves behind (for the Ctrl-C message)."""
    name = getattr(module, "__name__", "")
    return getattr(module, "INTERRUPT_NOTE", None) or INTERRUPT_NOTES.get(name, DEFAULT_INTERRUPT_NOTE)


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: cxrdet COMMAND [options]   (cxrdet COMMAND --help for its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {helptext}" for name, (_, helptext) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0 if argv else EXIT_USAGE
    if argv[0] == "--version":
        from cxrdet import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"cxrdet: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_USAGE
    module = importlib.import_module(COMMANDS[name][0])
    parser = module.get_args_parser()
    parser.prog = f"cxrdet {name}"
    args = parser.parse_args(rest)  # argparse exits 2 with a message on bad flags
    return run_main(module.main, args, prog=parser.prog, note=interrupt_note(module))


def run_main(fn, args, prog: str, note: str | None = None) -> int:
    """Call a command's ``main``; user errors and file-system errors become a message and exit 2.

    ``note`` says what an interrupted run leaves behind (default: from ``fn``'s module).
    """
    try:
        code = fn(args)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # e.g. --out names a folder, a disk is full: the message names the path
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if note is None:
            note = interrupt_note(sys.modules.get(getattr(fn, "__module__", ""), None))
        print(f"{prog}: interrupted; {note}", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
