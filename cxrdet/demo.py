"""``cxrdet demo``: the whole pipeline, from nothing, on synthetic data, in one folder.

synth -> prepare (train, test) -> split -> train detector (light backbone, short CPU schedule)
-> out-of-fold detections on the validation fold -> train the image-level classifier on the
same folds -> its out-of-fold probabilities -> train gate twice, without and with the classifier's
evidence (its ~50 out-of-fold images are too few to tune on, so it keeps the default thresholds:
docs/gate.md) -> infer on the held-out test set with each gate, and with the stacked gate plus
rescoring by the classifier (overlays, image-level CSV) -> Grad-CAM heatmaps of the test set ->
evaluate each, next to the all-normal baseline (every image ``14 1 0 0 1 1``). Every stage is the real command, called in-process through its
own ``get_args_parser()`` and ``main(args)``, so the demo runs exactly what a user would type;
``DIR/commands.txt`` lists those commands.

Layout of ``--out`` (default data/demo)::

    synth/            DICOMs + train.csv + test.csv          cache/   HDF5 caches + META CSVs
    folds.csv         K-fold split                           detector/  training run (export/)
    oof_fold0.csv     validation-fold detections             gate/    gate model + report
    classifier/       classifier run (export/)               oof_probs_fold0.csv  its OOF probabilities
    gate_clf/         the gate with classifier evidence      submission_clf*.csv  its submissions
    submission.csv    test-set submission                    image_level.csv, overlays/
    heatmaps/         Grad-CAM PNGs + heatmaps.h5            eval_classifier/  AUROC, pointing game
    eval*/            metrics.json, per-class plots          baseline/  all-normal submission + metrics
    summary.json      every mAP, timings and paths
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from cxrdet.cli import COMMANDS
from cxrdet.errors import EXIT_OK, UserError
from cxrdet.flags import DEFAULT_SEED, add_device_flag
from cxrdet.formats.atomic import write_frame, write_json, write_text

INTERRUPT_NOTE = "the steps finished so far are kept under --out, but the demo does not resume: rerun it with --overwrite"

MARKER = ".cxrdet-demo"  # marks a folder the demo made, so --overwrite never deletes anything else


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo run, tuned to finish in about 8 minutes on 2 CPU cores."""

    n_train: int = 200  # enough images for the light detector to learn the frequent classes
    n_test: int = 60  # held-out images for the reported mAP
    scale: float = 0.25  # synthetic originals ~600-850 px: realistic non-square sizes, cheap to decode
    size: int = 256  # cache long side; the detector trains and infers at this size (lesions stay >= 3 px)
    n_folds: int = 4  # fold 0 validates the detector and trains the gate (out-of-fold evidence)
    steps: int = 675  # ~0.63 s each on 2 cores: the CPU time 400 steps took at torchvision's COCO budgets
    batch_size: int = 4  # images per step
    lr: float = 0.01  # SGD with warmup + cosine; 0.02 scored level with it (bench_recipe.py)
    warmup_steps: int = 51  # short: the light model from scratch is stable at this lr
    rpn_pre_nms_top_n_train: int = 1000  # COCO's 2000 proposals are sized for dozens of objects, not 0-5 findings
    rpn_post_nms_top_n_train: int = 500  # likewise (COCO 2000); with 128 RoIs: +0.26 mAP at equal CPU time, 3 seeds
    box_batch_size_per_image: int = 128  # COCO's 512 sampled RoIs are mostly background on a chest X-ray
    rpn_post_nms_top_n_test: int = 300  # the box head is most of inference: 1.6x faster than 1000, mAP level (3 seeds)
    val_share: float = 0.5  # validation (best-checkpoint choice) on half the fold: epochs are short here
    tta: str = "hflip"  # flip TTA merged with WBF, as the 2nd-place solution did
    vis_conf: float = 0.15  # a short CPU schedule scores true boxes ~0.2-0.5: draw them
    clf_arch: str = "resnet18"  # the lightest torchvision backbone that learns these findings from scratch in minutes
    clf_size: int = 128  # half the cache: 4x cheaper than 256, large findings stay visible
    clf_epochs: int = 5  # ~15 s each on 2 cores for 150 images
    clf_batch_size: int = 16
    clf_lr: float = 2e-3  # AdamW from scratch on ~50 steps: the default 3e-4 learns nothing in time
    clf_warmup_steps: int = 10  # the default 100 would outlast the whole schedule
    cam_classes: str = "top3"  # heatmaps of the three most probable findings per test image


QUICK = DemoPlan(n_train=80, n_test=30, steps=60, warmup_steps=10, clf_epochs=1)


def detector_recipe(plan: DemoPlan, steps: int | None = None) -> list[str]:
    """The demo's `cxrdet train` recipe flags (model, size, schedule, budgets): the demo, bench_quality.py
    and bench_recipe.py train with exactly these, so a benchmark measures what the demo ships."""
    return ["--arch", "fasterrcnn_resnet18_fpn", "--min-size", str(plan.size), "--max-size", str(plan.size),
            "--max-steps", str(steps or plan.steps), "--batch-size", str(plan.batch_size), "--lr", str(plan.lr),
            "--warmup-steps", str(plan.warmup_steps), "--limit-val-batches", str(plan.val_share),
            "--rpn-pre-nms-top-n-train", str(plan.rpn_pre_nms_top_n_train),
            "--rpn-post-nms-top-n-train", str(plan.rpn_post_nms_top_n_train),
            "--box-batch-size-per-image", str(plan.box_batch_size_per_image),
            "--rpn-post-nms-top-n-test", str(plan.rpn_post_nms_top_n_test)]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Run the whole pipeline on synthetic data (synth -> prepare -> split -> train -> "
        "gate -> infer -> evaluate) and compare with the all-normal baseline; everything goes under --out.",
    )
    p.add_argument("--out", default="data/demo", help="folder for everything the demo writes (default data/demo)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"seed of the synthetic data, split, detector and gate (default {DEFAULT_SEED})")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (a smoke test, lower mAP)")
    p.add_argument("--steps", type=int, help="override the number of detector training steps")
    p.add_argument("--workers", type=int, default=2, help="processes for preprocessing and data loading")
    add_device_flag(p, "the detector trains and infers (train gets it as its --device shorthand)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo run in --out")
    return p


class Runner:
    """Runs cxrdet commands in-process, logging each as the shell command it equals."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.timings: dict[str, float] = {}
        self.log = out / "commands.txt"
        self.lines: list[str] = []

    def __call__(self, step: str, command: str, argv: list[str], ok: tuple[int, ...] = (EXIT_OK,)) -> None:
        line = "cxrdet " + " ".join(shlex.quote(a) for a in [command, *argv])
        print(f"\n=== demo: {step}\n$ {line}", flush=True)
        self.lines.append(line + "\n")
        write_text(self.log, "".join(self.lines))  # rewritten whole each step: never a torn line
        module = importlib.import_module(COMMANDS[command][0])
        parser = module.get_args_parser()
        parser.prog = f"cxrdet {command}"
        start = time.perf_counter()
        code = int(module.main(parser.parse_args(argv)) or 0)
        self.timings[step] = round(time.perf_counter() - start, 1)
        if code not in ok:
            raise UserError(f"demo step '{step}' failed with exit code {code}: {line}")
        print(f"=== demo: {step} done in {self.timings[step]:.0f} s", flush=True)


def prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise UserError(f"--out {out} is not empty and was not made by `cxrdet demo`; choose an empty folder")
        if not overwrite:
            raise UserError(f"--out {out} holds an earlier demo run; pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / MARKER, "made by `cxrdet demo`; --overwrite may delete this folder\n")


def fold_labels(labels_csv: Path, folds_csv: Path, fold: int, out_csv: Path) -> Path:
    """The label rows of one fold's images (the gate trains on the detector's held-out fold)."""
    from cxrdet.formats.folds import fold_members, read_folds

    held_out = set(fold_members(read_folds(folds_csv), fold))
    labels = pd.read_csv(labels_csv, dtype={"image_id": str}, keep_default_na=False)
    write_frame(out_csv, labels[labels["image_id"].isin(held_out)])
    return out_csv


def write_all_normal(test_meta: Path, out_csv: Path) -> Path:
    """The baseline: every test image predicted ``14 1 0 0 1 1``."""
    from cxrdet.detections import normal_detection
    from cxrdet.formats.submission import write_submission

    ids = sorted(pd.read_csv(test_meta, dtype={"image_id": str})["image_id"])
    return write_submission(out_csv, {i: normal_detection(1.0) for i in ids}, ids)


def run_pipeline(args: argparse.Namespace, plan: DemoPlan, run: Runner) -> dict:
    d = run.out
    seed, workers = str(args.seed), str(args.workers)
    run("synthetic data", "synth", ["--out", str(d / "synth"), "--n-train", str(plan.n_train),
        "--n-test", str(plan.n_test), "--scale", str(plan.scale), "--seed", seed, "--workers", workers])
    for split in ("train", "test"):
        run(f"prepare {split}", "prepare", ["--dicom-dir", str(d / "synth" / split), "--out",
            str(d / "cache" / f"{split}.h5"), "--meta-out", str(d / "cache" / f"{split}_meta.csv"),
            "--size", str(plan.size), "--workers", workers])
    labels, folds = d / "synth" / "train.csv", d / "folds.csv"
    run("split", "split", ["--labels", str(labels), "--n-folds", str(plan.n_folds), "--seed", seed, "--out", str(folds)])
    run("train detector", "train", [
        "--out", str(d / "detector"), "--cache", str(d / "cache" / "train.h5"), "--labels", str(labels),
        "--folds", str(folds), "--fold", "0", *detector_recipe(plan, args.steps),
        "--log-every-n-steps", "10", "--workers", workers, "--device", args.device, "--seed", seed])
    model = str(d / "detector" / "export")
    common = ["--model", model, "--workers", workers, "--device", args.device]
    run("out-of-fold detections (fold 0)", "infer", [*common, "--cache", str(d / "cache" / "train.h5"),
        "--folds", str(folds), "--fold", "0", "--out", str(d / "oof_fold0.csv")])
    classifier_steps(args, plan, run)
    gate_labels = fold_labels(labels, folds, 0, d / "labels_fold0.csv")
    gate_args = ["--meta", str(d / "cache" / "train_meta.csv"), "--labels", str(gate_labels),
                 "--detections", str(d / "oof_fold0.csv"), "--detector-run", str(d / "detector"), "--seed", seed]
    run("train gate + tune thresholds", "train-gate", [*gate_args, "--out", str(d / "gate")])
    run("train gate with classifier evidence", "train-gate", [
        *gate_args, "--classifier-probs", str(d / "oof_probs_fold0.csv"), "--out", str(d / "gate_clf")])
    test = [*common, "--dicom-dir", str(d / "synth" / "test"), "--tta", plan.tta]
    run("infer on the held-out test set", "infer", [
        *test, "--gate", str(d / "gate"), "--vis-dir", str(d / "overlays"), "--vis-conf", str(plan.vis_conf),
        "--image-level-out", str(d / "image_level.csv"), "--out", str(d / "submission.csv")])
    stacked = [*test, "--gate", str(d / "gate_clf"), "--classifier", str(d / "classifier" / "export")]
    run("infer with the stacked gate", "infer", [
        *stacked, "--rescore", "none", "--image-level-out", str(d / "image_level_clf.csv"), "--out", str(d / "submission_clf.csv")])
    run("infer with the stacked gate + rescoring", "infer", [
        *stacked, "--rescore", "classifier", "--image-level-out", str(d / "image_level_clf_rescored.csv"),
        "--out", str(d / "submission_clf_rescored.csv")])
    return evaluate_all(args, plan, run)


def classifier_steps(args: argparse.Namespace, plan: DemoPlan, run: Runner) -> None:
    """Train the image-level classifier on the detector's folds; its fold-0 (out-of-fold) probabilities."""
    d = run.out
    run("train classifier", "train-classifier", [
        "--out", str(d / "classifier"), "--cache", str(d / "cache" / "train.h5"), "--labels", str(d / "synth" / "train.csv"),
        "--folds", str(d / "folds.csv"), "--fold", "0", "--arch", plan.clf_arch, "--size", str(plan.clf_size),
        "--epochs", str(plan.clf_epochs), "--batch-size", str(plan.clf_batch_size), "--lr", str(plan.clf_lr),
        "--warmup-steps", str(plan.clf_warmup_steps), "--workers", str(args.workers),
        "--device", args.device, "--seed", str(args.seed)])
    run("out-of-fold classifier probabilities (fold 0)", "classify", [
        "--model", str(d / "classifier" / "export"), "--cache", str(d / "cache" / "train.h5"), "--folds",
        str(d / "folds.csv"), "--fold", "0", "--workers", str(args.workers), "--device", args.device,
        "--out", str(d / "oof_probs_fold0.csv")])


VARIANTS = {  # summary key -> (submission, image-level CSV, evaluation folder, table label)
    "gate": ("submission.csv", "image_level.csv", "eval", "detector + gate"),
    "gate_clf": ("submission_clf.csv", "image_level_clf.csv", "eval_clf", "detector + gate with classifier evidence"),
    "gate_clf_rescored": ("submission_clf_rescored.csv", "image_level_clf_rescored.csv", "eval_clf_rescored",
                          "  + boxes rescored by the classifier"),
}


def evaluate_all(args: argparse.Namespace, plan: DemoPlan, run: Runner) -> dict:
    """Heatmaps of the test set, then every submission and the baseline scored: the summary's numbers."""
    d = run.out
    gt = str(d / "synth" / "test.csv")
    run("Grad-CAM heatmaps of the test set", "classify", [
        "--model", str(d / "classifier" / "export"), "--dicom-dir", str(d / "synth" / "test"), "--workers",
        str(args.workers), "--device", args.device, "--cam-dir", str(d / "heatmaps"), "--cam-classes",
        plan.cam_classes, "--cam-raw", "--out", str(d / "test_probs.csv")])
    run("evaluate the classifier and its heatmaps", "evaluate-classifier", [
        "--labels", gt, "--probs", str(d / "test_probs.csv"), "--cam", str(d / "heatmaps" / "heatmaps.h5"),
        "--out", str(d / "eval_classifier"), "--bootstrap", "200", "--seed", str(args.seed)])
    scores = {}
    for key, (sub, image_level, folder, _) in VARIANTS.items():
        plots = ["--plot-dir", str(d / folder / "plots")] if key == "gate" else []
        run(f"evaluate {sub}", "evaluate", ["--gt", gt, "--pred", str(d / sub), "--json",
            str(d / folder / "metrics.json"), *plots, "--image-level", str(d / image_level)])
        m = json.loads((d / folder / "metrics.json").read_text())
        scores[key] = {"map": m["map"], "map_no14": m["map_no14"],
                       "auroc_abnormal": (m.get("image_auc") or {}).get("abnormal")}
    write_all_normal(d / "cache" / "test_meta.csv", d / "baseline" / "all_normal.csv")
    run("evaluate the all-normal baseline", "evaluate", ["--gt", gt, "--pred", str(d / "baseline" / "all_normal.csv"),
        "--json", str(d / "baseline" / "metrics.json")])
    base = json.loads((d / "baseline" / "metrics.json").read_text())
    clf = json.loads((d / "eval_classifier" / "metrics.json").read_text())
    cam = clf["cam"]
    ours = scores["gate"]
    rescore = json.loads((d / "gate_clf" / "gate_schema.json").read_text()).get("rescore", {})
    return {"rescore_auto": rescore, "map": ours["map"], "map_no14": ours["map_no14"], "baseline_map": base["map"],
            "baseline_map_no14": base["map_no14"], "n_test_images": plan.n_test, "variants": scores,
            "classifier": {"macro_auroc": clf["macro_auroc"], "auroc_abnormal": clf["per_class"].get("abnormal", {}).get("auroc"),
                           "pointing_game": cam["pointing_game"]["overall"], "heatmap_box_map_no14": cam["heatmap_box_map"]["map_no14"]}}


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    plan = QUICK if args.quick else DemoPlan()
    prepare_out(out, args.overwrite)
    run = Runner(out)
    start = time.perf_counter()
    scores = run_pipeline(args, plan, run)
    total = time.perf_counter() - start
    summary = {**scores, "seconds": round(total, 1), "timings_s": run.timings, "plan": asdict(plan),
               "paths": {"submission": str(out / "submission.csv"), "overlays": str(out / "overlays"),
                         "plots": str(out / "eval" / "plots"), "metrics": str(out / "eval" / "metrics.json"),
                         "image_level": str(out / "image_level.csv"), "heatmaps": str(out / "heatmaps"),
                         "classifier_eval": str(out / "eval_classifier" / "metrics.json"), "commands": str(run.log)}}
    write_json(out / "summary.json", summary)
    print_summary(summary)
    return EXIT_OK


def _num(x) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) and x == x else "   -  "


def print_summary(s: dict) -> None:
    p, v, c = s["paths"], s["variants"], s["classifier"]
    print("\n=== demo: done in {:.0f} s".format(s["seconds"]))
    print(f"mAP@0.4 on the synthetic test set ({s['n_test_images']} images):")
    print(f"  {'':<44} {'mAP@0.4':>8} {'no cl.14':>8} {'AUROC p(abn.)':>13}")
    print(f"  {'all-normal baseline':<44} {_num(s['baseline_map']):>8} {_num(s['baseline_map_no14']):>8}")
    for key, (_, _, _, label) in VARIANTS.items():
        e = v[key]
        print(f"  {label:<44} {_num(e['map']):>8} {_num(e['map_no14']):>8} {_num(e['auroc_abnormal']):>13}")
    r = s.get("rescore_auto") or {}
    print(f"--rescore auto with the stacked gate: {r.get('choice', 'none')} ({r.get('reason', 'not measured')})")
    pg = c["pointing_game"]
    print(f"classifier: macro AUROC {_num(c['macro_auroc'])}, abnormal AUROC {_num(c['auroc_abnormal'])}; Grad-CAM "
          f"pointing game {_num(pg['hit_rate'])} (chance {_num(pg['chance'])}), heatmap boxes mAP@0.4 without "
          f"class 14 {_num(c['heatmap_box_map_no14'])}")
    print(f"(one training seed, {s['n_test_images']} test images: differences below ~0.1 mAP are noise; "
          "benchmarks/bench_quality.py measures gains over seeds)")
    print(f"submission:   {p['submission']}")
    print(f"overlays:     {p['overlays']}/")
    print(f"heatmaps:     {p['heatmaps']}/ (Grad-CAM overlay per test image and class)")
    print(f"plots:        {p['plots']}/ (PR curves, AP per class)")
    print(f"metrics:      {p['metrics']}")
    print(f"image-level:  {p['image_level']}")
    print(f"commands run: {p['commands']} (the same pipeline by hand)")
    sys.stdout.flush()
