#!/usr/bin/env python3
"""A peer on the same work: ultralytics YOLOv8n from scratch vs cxrdet's demo recipe, same data, CPU time and threads.

Protocol (per training seed, on ONE synthetic dataset):
  * cxrdet: exactly bench_quality.py's run (the demo's recipe: light R18-FPN, 256 px, its
    schedule; fold 0 of 4 validates and feeds the gate), timed: the `train` command's wall time
    is the CPU budget.
  * YOLOv8n: built from its yaml (``YOLO("yolov8n.yaml")``, ``pretrained=False``: random init,
    nothing downloaded), trained for the SAME wall time (ultralytics' ``time=`` hours argument,
    which overrides epochs) and the same torch thread count, on the same fused labels and folds:
    the YOLO layout (PNG + normalised xywh txt) is written from cxrdet's own training targets
    (cxrdet.detector.data.load_table: readers fused as `cxrdet train` fuses them, boxes in cache
    pixels), train = folds 1..3, val = fold 0, at the cache's 256 px.
  * Both predict the same test images (YOLO from the test cache's pixels, i.e. the same
    preprocessing), YOLO's boxes are mapped to original pixels with cxrdet.detections.to_original,
    written with cxrdet.formats.submission.write_submission and scored with `cxrdet evaluate`.
    Rows: YOLOv8n without TTA and with its own TTA (``augment=True``: flips and scales), no gate
    (a gate for YOLO would need YOLO out-of-fold evidence; the gate's effect is measured on cxrdet
    by bench_quality.py); cxrdet's no-gate and gated rows with and without hflip TTA come from
    bench_quality.py's scorer on the same test set.

ultralytics is an optional, benchmark-only dependency (never a dependency of the package or of
the tests): ``pip install ultralytics`` pulls opencv-python next to the project's
opencv-python-headless; check ``python -c "import cv2"`` still works afterwards. Offline: the
script sets YOLO_OFFLINE=1, a private YOLO_CONFIG_DIR, ``settings.update(sync=False)``,
``amp=False`` (the AMP check downloads weights) and ``plots=False`` (plots download Arial.ttf).

    python benchmarks/bench_vs_yolo.py --threads 2                 # seeds 0 1 2, ~1.5 h on 2 cores
    python benchmarks/bench_vs_yolo.py --quick --threads 2         # smoke run (figures are noise)

First run 2026-12-04: ``--quick`` smoke run (138 s, ultralytics 8.4.190 in a venv made with
``python -m venv --system-site-packages`` so the project's environment stays as it is). It
found two bugs, both fixed: the mAP rows were read together with bench_quality's AUROC entry
(KeyError), and with mlflow installed (a cxrdet dependency) ultralytics logged every run into
./mlflow.db and ./mlruns, so every logging integration is now switched off. A smoke run's
figures are noise.

First full-size run 2026-12-04, ONE seed (--seeds 0; 800 train / 500 test images, 2 threads,
1740 s in all on the quiet 2-core box): cxrdet's detector trained 554 s, YOLOv8n 566 s (11
epochs at batch 4, the same batch as cxrdet; its validation mAP50 was still rising, 0.027 ->
0.040 over the last two epochs). mAP@0.4 on the 500 test images (without class 14):

    no gate | tta none                     0.2524 (0.2704)
    no gate | tta hflip                    0.2539 (0.2721)
    gate 0.08/0.95 | tta none              0.3177 (0.2707)   (train-gate kept the defaults)
    gate 0.08/0.95 | tta hflip             0.3184 (0.2720)
    gate+clf 0.08/0.95 | tta none          0.3191 (0.2720)
    gate+clf 0.08/0.95 + rescore           0.3038 (0.2555)
    YOLOv8n | tta none                     0.0696 (0.0746)
    YOLOv8n | tta yolo augment             0.0720 (0.0771)

One seed gives no spread, so this is no claim. It also disagrees with the issue's hand run on
the demo's 150 training images, where YOLOv8n got ~40 epochs in 391 s and was level with
cxrdet. Here it gets 11 epochs, 3 of them warmup, so YOLO's batch and schedule at a fixed time
budget need a look before the 3-seed run. The issue's earlier hand-run measurement (same
fused labels and folds, 391 s of CPU, 2 threads, no gate, 60 test images): YOLOv8n seed 0 / 1
mAP@0.4 0.328 / 0.304 (without class 14 0.284 / 0.257); cxrdet demo recipe with hflip TTA and no
gate 0.301 / 0.408.

Three seeds, 2026-12-04: seeds 1 and 2 run as ``--seeds 1 2`` on the same --seed-data (the data,
caches and folds are byte-identical to seed 0's run), merged with ``--merge``. cxrdet trained 554 /
532 / 678 s, YOLOv8n 566 / 547 / 685 s (11 / 12 / 15 epochs; seed 2's detector training ran
slower than the others for no reason found on this box, and YOLO got the same longer budget; its
own validation mAP50 was still rising, e.g. seed 1: 0.056 -> 0.097 -> 0.115 over its last three epochs). mAP@0.4 on the 500 test images, mean
and std over seeds 0 1 2 (per seed):

    no gate | tta none                 0.2440  0.0141   0.252  0.252  0.228
    no gate | tta hflip                0.2446  0.0212   0.254  0.260  0.220
    gate train-gate choice | hflip     0.3065  0.0204   0.318  0.318  0.283   (defaults kept on every seed)
    gate+clf | tta none                0.3093  0.0176   0.319  0.320  0.289
    YOLOv8n | tta none                 0.1131  0.0421   0.070  0.116  0.154
    YOLOv8n | tta yolo augment         0.1067  0.0337   0.072  0.109  0.139

    paired per seed, cxrdet minus YOLOv8n:
      no gate, no TTA  -  YOLOv8n, no TTA         +0.131  std 0.054   (+0.183  +0.136  +0.074)
      no gate, hflip   -  YOLOv8n, its TTA        +0.138  std 0.052
      gated, hflip     -  YOLOv8n, its TTA        +0.200  std 0.052

cxrdet's demo recipe is ahead by more than the noise (mean / (std / sqrt 3) ~ 4) at the same CPU
time and threads. The gap shrinks seed by seed as YOLO's share of the budget varies; a longer
budget would favour YOLO, which is far from converged. A test-suite run paused (SIGSTOP) this
benchmark between seed 2's detector training and its evaluation: no timed stage shared the cores.

The figures above are the demo recipe before 2026-12-05 (torchvision's COCO proposal/RoI budgets,
400 steps). The recipe since (RPN 1000 -> 500 training proposals, 128 RoIs, 675 steps: the same
CPU time, see bench_recipe.py) was measured by bench_quality.py on the same data, the same 500
test images and the same seeds (2026-12-05, with 1000 inference proposals where the shipped recipe now scores 300); its seed 2
detector trained 674 s on the quiet box, the budget YOLOv8n got for seed 2 above. YOLOv8n was not
trained again, so this pairs the new cxrdet runs with the YOLO runs above, seed by seed:

    cxrdet (2026-12-05 recipe)             per seed               minus YOLOv8n (same seed)
    no gate | tta none                     0.478  0.523  0.467    +0.409  +0.407  +0.313   mean +0.376  std 0.055
    no gate | tta hflip (vs YOLO's TTA)    0.483  0.526  0.499    +0.411  +0.417  +0.360   mean +0.396  std 0.031
    gated | tta hflip (vs YOLO's TTA)      0.548  0.587  0.557    +0.476  +0.478  +0.418   mean +0.457  std 0.034

A run of this script now trains cxrdet with the shipped recipe (bench_quality.train_seed) and
gives YOLOv8n that run's measured training time, on bench_quality's 1000 test images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_quality as bq  # noqa: E402
from cxrdet.classes import CLASS_NAMES, NUM_FINDINGS, label_to_class  # noqa: E402
from cxrdet.demo import Runner, prepare_out  # noqa: E402
from cxrdet.detections import Detections, to_original  # noqa: E402
from cxrdet.formats.atomic import write_bytes, write_json, write_text  # noqa: E402
from cxrdet.formats.labels import read_labels  # noqa: E402
from cxrdet.formats.submission import write_submission  # noqa: E402
from cxrdet.preprocess.cache import CacheReader  # noqa: E402


# like against like: no TTA against no TTA, each detector's own TTA, and the shipped pipeline (gate) against YOLO's best
PAIRS = (("no gate | tta none", "YOLOv8n | tta none"), ("no gate | tta hflip", "YOLOv8n | tta yolo augment"),
         ("gate train-gate choice | tta hflip", "YOLOv8n | tta yolo augment"))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data/bench_vs_yolo", help="work folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of both detectors")
    p.add_argument("--seed-data", type=int, default=0, help="seed of the synthetic data and the split")
    p.add_argument("--threads", type=int, default=2, help="torch threads for both trainings (same CPU budget)")
    p.add_argument("--quick", action="store_true", help="smoke run: bench_quality's --quick sizes, seeds 0 1")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes for both")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--merge", nargs="+", metavar="RESULTS_JSON",
                   help="only print the table of earlier runs' results.json together (runs of other seeds on the "
                        "same --seed-data), e.g. a seed run again after an interruption")
    return p


def merge(paths: list[str]) -> int:
    """The table over several runs' seeds; refuses runs of different kinds (quick vs full, threads)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    kinds = {(r["quick"], r["threads"]) for r in runs}
    if len(kinds) > 1:
        sys.exit(f"--merge: the runs differ in quick/threads {sorted(kinds)}; merge runs of one kind only")
    results = {k: v for r in runs for k, v in r["results"].items()}
    seeds = sorted(int(k) for k in results)
    print_table(results, seeds)
    return 0


def offline_ultralytics(out: Path):
    """Import ultralytics with every network path off (see the module docstring)."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_CONFIG_DIR"] = str(out / "ultralytics_config")
    try:
        import ultralytics
    except ImportError:
        sys.exit("bench_vs_yolo needs ultralytics (an optional, benchmark-only dependency): pip install ultralytics")
    # no logging integration: with mlflow installed (a cxrdet dependency) ultralytics would log
    # every run into ./mlflow.db and ./mlruns of the working directory
    loggers = ("mlflow", "tensorboard", "wandb", "clearml", "comet", "dvc", "neptune", "raytune", "hub")
    ultralytics.settings.update({"sync": False, **{k: False for k in loggers if k in ultralytics.settings}})
    return ultralytics


def png(image: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def write_yolo_layout(d: Path, plan, root: Path) -> Path:
    """YOLO images/labels from cxrdet's fused training targets (cache pixels); returns data.yaml."""
    from cxrdet.detector.config import DetectorConfig
    from cxrdet.detector.data import load_table

    cfg = DetectorConfig(cache=str(d / "cache" / "train.h5"), labels=str(d / "synth" / "train.csv"),
                         folds=str(d / "folds.csv"), fold=0, out=str(root))
    table = load_table(cfg)
    with CacheReader(cfg.cache) as reader:
        for split, ids in (("train", table.train_ids), ("val", table.val_ids)):
            for i in ids:
                image, _ = reader.read(i)
                h, w = image.shape
                boxes, labels = table.targets[i]
                cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2 / w, (boxes[:, 1] + boxes[:, 3]) / 2 / h
                bw, bh = (boxes[:, 2] - boxes[:, 0]) / w, (boxes[:, 3] - boxes[:, 1]) / h
                lines = [f"{int(c)} {a:.6f} {b:.6f} {e:.6f} {f:.6f}"
                         for c, a, b, e, f in zip(label_to_class(labels), cx, cy, bw, bh)]
                write_bytes(root / "images" / split / f"{i}.png", png(image))
                write_text(root / "labels" / split / f"{i}.txt", "".join(line + "\n" for line in lines))
    names = "".join(f"  {k}: {json.dumps(CLASS_NAMES[k])}\n" for k in range(NUM_FINDINGS))
    return write_text(root / "data.yaml", f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}")


def train_yolo(data_yaml: Path, run_dir: Path, seed: int, hours: float, plan, workers: int):
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")  # architecture only: random weights
    model.train(data=str(data_yaml), time=hours, imgsz=plan.size, batch=plan.batch_size, seed=seed,
                deterministic=True, pretrained=False, amp=False, plots=False, device="cpu", workers=workers,
                project=str(run_dir.parent), name=run_dir.name, exist_ok=True, verbose=False)
    return model


def predict_yolo(model, d: Path, out_csv: Path, augment: bool, plan) -> Path:
    """YOLO on the test cache's pixels -> submission in original pixels."""
    preds, ids = {}, []
    with CacheReader(d / "cache" / "test.h5") as reader:
        for i in reader.ids:
            image, meta = reader.read(i)
            rgb = np.repeat(image[:, :, None], 3, axis=2)
            r = model.predict(rgb, imgsz=plan.size, conf=0.001, augment=augment, verbose=False, device="cpu")[0]
            det = Detections(r.boxes.xyxy.numpy(), r.boxes.conf.numpy(), r.boxes.cls.numpy().astype(np.int64))
            preds[i] = to_original(det, image.shape, (meta["orig_height"], meta["orig_width"]))
            ids.append(i)
    return write_submission(out_csv, preds, ids)


def evaluate(run: Runner, step: str, gt: Path, sub: Path) -> dict:
    run(step, "evaluate", ["--gt", str(gt), "--pred", str(sub), "--json", str(sub.with_suffix(".metrics.json"))])
    m = json.loads(sub.with_suffix(".metrics.json").read_text())
    return {"map": m["map"], "map_no14": m["map_no14"]}


def main(args: argparse.Namespace) -> int:
    import torch

    if args.merge:
        return merge(args.merge)
    torch.set_num_threads(args.threads)
    plan, seeds = (bq.QUICK, [0, 1]) if args.quick else (bq.FULL, args.seeds)
    out = Path(args.out)
    prepare_out(out, args.overwrite)
    offline_ultralytics(out)
    run, workers = bq.StageRunner(out), str(args.workers)
    bq.prepare_data(run, plan, args.seed_data, workers)
    data_yaml = write_yolo_layout(out, plan, out / "yolo_data")
    gt, train_labels = read_labels(out / "synth" / "test.csv"), read_labels(out / "synth" / "train.csv")
    results: dict[str, dict] = {}
    for s in seeds:
        seed_dir = bq.train_seed(run, plan, s, workers, bq.QUICK_GATE_FOLDS if args.quick else 5)
        budget = run.timings[f"seed {s}: train detector"]
        cx = bq.score_seed(seed_dir, gt, train_labels, s, out / "cache" / "test_meta.csv")
        start = time.perf_counter()
        model = train_yolo(data_yaml, out / f"yolo_seed{s}", s, budget / 3600, plan, args.workers)
        yolo_s = time.perf_counter() - start
        rows = {k: {"map": v["map"], "map_no14": v["map_no14"]} for k, v in cx.items() if "map" in v}  # mAP rows only
        for tta, augment in (("none", False), ("yolo augment", True)):
            sub = predict_yolo(model, out, out / f"yolo_seed{s}" / f"test_{tta.replace(' ', '_')}.csv", augment, plan)
            rows[f"YOLOv8n | tta {tta}"] = evaluate(run, f"seed {s}: evaluate YOLO tta {tta}", out / "synth" / "test.csv", sub)
        results[str(s)] = {"rows": rows, "cxrdet_train_s": budget, "yolo_train_s": round(yolo_s, 1)}
        print(f"seed {s}: cxrdet trained {budget:.0f} s, YOLOv8n {yolo_s:.0f} s ({args.threads} threads)")
    print_table(results, seeds)
    write_json(out / "results.json", {"quick": args.quick, "threads": args.threads, "seeds": seeds, "results": results})
    print(f"wrote {out / 'results.json'}{' (QUICK smoke run: not a measurement)' if args.quick else ''}")
    return 0


def print_table(results: dict, seeds: list[int]) -> None:
    keys = list(results[str(seeds[0])]["rows"])
    print(f"\nmAP@0.4, same test set, seeds {seeds} (mean / std over seeds, ddof 1; per seed with 14 / without)")
    for k in keys:
        m = [results[str(s)]["rows"][k]["map"] for s in seeds]
        m14 = [results[str(s)]["rows"][k]["map_no14"] for s in seeds]
        std = np.std(m, ddof=1) if len(m) > 1 else float("nan")
        per = "  ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(m, m14))
        print(f"{k:<42} {np.mean(m):7.4f} {std:7.4f}  no14 {np.mean(m14):7.4f}  {per}")
    print("\npaired per seed, cxrdet minus YOLOv8n (same seed; ahead beyond noise when mean >> std / sqrt(seeds))")
    for ours, theirs in PAIRS:
        d = [results[str(s)]["rows"][ours]["map"] - results[str(s)]["rows"][theirs]["map"] for s in seeds]
        std = np.std(d, ddof=1) if len(d) > 1 else float("nan")
        print(f"  {ours + '  -  ' + theirs:<66} mean {np.mean(d):+.4f}  std {std:.4f}  "
              f"per seed {'  '.join(f'{x:+.3f}' for x in d)}")


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
