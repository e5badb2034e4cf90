#!/usr/bin/env python3
"""Detector recipes for the CPU demo, compared at the SAME CPU budget over several training seeds.

torchvision's Faster R-CNN defaults are sized for COCO (2,000 RPN proposals and 512 sampled
RoIs per training image), while a chest X-ray holds 0-5 findings. This benchmark measures the
budgets, the light backbone, the schedule and the augmentations against the demo's detector
recipe as shipped (cxrdet.demo.detector_recipe: light R18-FPN, 256 px, batch 4, RPN 1000 -> 500
training proposals, 128 RoIs, 675 steps) and reports which one is ahead by more than the spread
over seeds. The variant "coco budgets" is the demo recipe before 2026-12-05 (torchvision's budgets).

Protocol, on bench_quality.py's data (800 train / 1000 test synthetic images, 500 before 2026-12-05;
fold 0 of 4 validates):
  1. CPU cost: each variant's seconds per training step on THIS machine's CPU with --cost-threads
     threads (bench_train.py's plain torchvision loop over the variant's real model and data,
     best of --cost-repeats after a warm-up), unless --costs names a costs.json measured earlier.
  2. Same CPU budget: a variant trains demo_steps x (demo s/step / its s/step) steps (its warmup
     scaled alike), i.e. the number of steps the demo's CPU time buys it.
  3. Per variant and seed: `cxrdet train` (the real command, on --device; the step count comes from
     the CPU cost, so a GPU only makes the benchmark faster), `cxrdet infer` on the test cache
     (--tta none, no gate: the gate adds the same class-14 rows to every detector), mAP@0.4 with
     and without class 14, its bootstrap SE over test images, and the paired difference to the
     demo recipe seed by seed. Runs go --parallel at a time (a GPU holds several).

    python benchmarks/bench_recipe.py --out /tmp/recipes                          # everything on this CPU
    python benchmarks/bench_recipe.py --costs-only --out /tmp/costs               # step 1 only
    python benchmarks/bench_recipe.py --costs /tmp/costs/costs.json --device gpu --parallel 6 --out /tmp/recipes
    python benchmarks/bench_recipe.py --data data/bench_quality --demo-from data/bench_quality \
        --variants "no crop/color" "lr 0.02" --out /tmp/recipes    # reuse bench_quality's data and demo runs

--demo-from takes the demo recipe's runs of bench_quality.py / bench_vs_yolo.py on the same data
(their seedN/test_none.csv) instead of training the reference again. --deadline stops starting
runs after that many seconds; the first variant after the demo gets every seed before the others.
--resume goes on with a run cut short: its finished (variant, seed) runs are scored, not trained again.

Results: --out/results.json (per variant and seed) and the printed table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_quality as bq  # noqa: E402
from cxrdet.demo import detector_recipe  # noqa: E402
from cxrdet.formats.atomic import write_json  # noqa: E402

COCO = ["--rpn-pre-nms-top-n-train", "2000", "--rpn-post-nms-top-n-train", "2000", "--box-batch-size-per-image", "512"]
# name -> (why it is tried, `cxrdet train` flags on top of the demo recipe); the most telling first,
# so a --deadline leaves out the least telling
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "demo": ("the demo recipe as shipped: R18-FPN, RPN 1000 -> 500 training proposals, 128 RoIs", []),
    "no crop/color": ("hflip as the only augmentation", ["--crop-prob", "0", "--color-prob", "0"]),
    "lr 0.02": ("twice the demo's lr", ["--lr", "0.02"]),
    "coco budgets": ("torchvision's defaults: 2000 -> 2000 proposals, 512 RoIs (the demo before 2026-12-05)", COCO),
    "mobilenet": ("torchvision's MobileNetV3-Large-FPN Faster R-CNN", ["--arch", "fasterrcnn_mobilenet_v3_large_fpn"]),
}
COST_NEUTRAL = {"--lr", "--hflip-prob", "--crop-prob", "--color-prob"}  # schedule and augmentation: same work per step
MAX_STEP_FACTOR = 4.0  # a variant cheaper than 1/4 of the demo per step still trains at most 4x the steps


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data/bench_recipe", help="work folder")
    p.add_argument("--data", help="a bench_quality/bench_vs_yolo folder whose cache/, synth/ and folds.csv to reuse")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME",
                   help=f"recipes to compare (default all: {', '.join(VARIANTS)})")
    p.add_argument("--device", default="cpu", help="where `cxrdet train`/`infer` run (cpu, gpu)")
    p.add_argument("--parallel", type=int, default=1, help="train/infer runs at a time")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes per run")
    p.add_argument("--prepare-workers", type=int, help="processes making the data (default: --workers)")
    p.add_argument("--demo-from", nargs="+", metavar="ROOT",
                   help="bench_quality/bench_vs_yolo folders on the same data whose seedN/test_none.csv are the demo rows")
    p.add_argument("--costs", help="costs.json of an earlier --costs-only run (CPU seconds per step)")
    p.add_argument("--costs-only", action="store_true", help="measure the CPU cost per step and stop")
    p.add_argument("--cost-threads", type=int, default=2, help="torch threads of the CPU cost measurement")
    p.add_argument("--cost-steps", type=int, default=8, help="timed steps per cost measurement")
    p.add_argument("--cost-repeats", type=int, default=2, help="cost measurements per variant (the best counts)")
    p.add_argument("--deadline", type=float, default=0,
                   help="seconds after which no new train/infer run starts (0 = none); variants missing a seed "
                        "are then left out of the table")
    p.add_argument("--quick", action="store_true", help="smoke run: bench_quality's --quick data and steps")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--resume", action="store_true",
                   help="keep an earlier run in --out: (variant, seed) runs that finished there are scored, not trained again")
    return p


def train_argv(d: Path, plan, out: Path, variant: str, steps: int, seed: int, device: str, workers: str) -> list[str]:
    """`cxrdet train` for one variant: the demo's recipe (cxrdet.demo.detector_recipe), the variant's flags last."""
    plan = dataclasses.replace(plan, warmup_steps=max(1, round(plan.warmup_steps * steps / plan.steps)))
    return ["--out", str(out), "--cache", str(d / "cache" / "train.h5"), "--labels", str(d / "synth" / "train.csv"),
            "--folds", str(d / "folds.csv"), "--fold", "0", *detector_recipe(plan, steps),
            "--log-every-n-steps", "10", "--workers", workers, "--device", device, "--seed", str(seed),
            *VARIANTS[variant][1]]


def cpu_costs(d: Path, plan, variants: list[str], args) -> dict[str, float]:
    """CPU seconds per training step of each variant (bench_train.py's plain loop, best of N)."""
    import torch

    from bench_train import plain_run
    from cxrdet.detector.data import load_table
    from cxrdet.detector.train import get_args_parser as train_parser
    from cxrdet.detector.train import resolve_config

    torch.set_num_threads(args.cost_threads)
    costs = {}
    for v in variants:
        argv = train_argv(d, plan, d / "cost_run", v, plan.steps, 0, "cpu", "0")
        cfg, _ = resolve_config(train_parser().parse_args(argv))
        cfg = dataclasses.replace(cfg, warmup_steps=0)
        table = load_table(cfg)
        rates = []
        for r in range(args.cost_repeats):
            torch.manual_seed(r)
            rates.append(plain_run(cfg, table, warmup=2, steps=args.cost_steps, device=torch.device("cpu")))
        costs[v] = plan.batch_size / max(rates)
        print(f"cost {v:<26} {costs[v]:.3f} s/step ({args.cost_threads} threads, best of {args.cost_repeats})", flush=True)
    return costs


def model_key(variant: str) -> tuple[str, ...]:
    """The flags that change the work of a step: variants that differ only in COST_NEUTRAL flags
    share one cost (the mean of their measurements), so timing noise cannot give them different steps."""
    flags, key = VARIANTS[variant][1], []
    for k in range(0, len(flags), 2):
        if flags[k] not in COST_NEUTRAL:
            key += flags[k:k + 2]
    return tuple(key)


def steps_at_budget(costs: dict[str, float], plan) -> dict[str, int]:
    """Steps each variant gets for the CPU time the demo's plan.steps take."""
    shared = {}
    for v in costs:
        shared.setdefault(model_key(v), []).append(costs[v])
    cost = {v: float(np.mean(shared[model_key(v)])) for v in costs}
    budget = cost["demo"] * plan.steps
    return {v: int(min(MAX_STEP_FACTOR * plan.steps, round(budget / c))) for v, c in cost.items()}


def run_one(d: Path, plan, variant: str, steps: int, seed: int, args, deadline: float) -> Path | None:
    """Train and infer one (variant, seed) in subprocesses; returns the test submission (None:
    not started, the deadline had passed)."""
    slug = variant.replace(" ", "_").replace("/", "_").replace(",", "").replace("+", "plus").replace(".", "")
    run_dir = Path(args.out) / f"{slug}_seed{seed}"
    sub = run_dir / "test_none.csv"
    if sub.is_file():  # a reused demo run
        return sub
    if deadline and time.perf_counter() > deadline:
        return None
    cmd, train_start = [sys.executable, "-m", "cxrdet"], time.perf_counter()
    # runs side by side share the cores: no run's thread pool may take them all
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // args.parallel)), **os.environ, "PYTHONUNBUFFERED": "1"}
    with open(run_dir.with_suffix(".log"), "w") as log:
        for argv in (["train", *train_argv(d, plan, run_dir, variant, steps, seed, args.device, str(args.workers))],
                     ["infer", "--model", str(run_dir / "export"), "--cache", str(d / "cache" / "test.h5"),
                      "--tta", "none", "--workers", str(args.workers), "--device", args.device, "--out", str(sub)]):
            rc = subprocess.run([*cmd, *argv], stdout=log, stderr=subprocess.STDOUT, env=env).returncode
            if rc:
                raise SystemExit(f"{variant} seed {seed}: cxrdet {argv[0]} failed (exit {rc}); see {log.name}")
            if argv[0] == "train":  # the CPU budget check: a variant's training should take the demo's time
                write_json(run_dir / "train_seconds.json", {"seconds": round(time.perf_counter() - train_start, 1)})
    print(f"done: {variant} seed {seed} ({steps} steps)", flush=True)
    return sub


def reuse_demo_runs(roots: list[str], seeds: list[int], out: Path) -> None:
    """The demo recipe's test predictions of earlier bench_quality / bench_vs_yolo runs on the same
    data (ROOT/seed{s}/test_none.csv, tta none; their class-14 rows are ignored by score) as this
    run's demo rows, so the reference is not trained again."""
    import shutil

    for s in seeds:
        found = [Path(r) / f"seed{s}" / "test_none.csv" for r in roots if (Path(r) / f"seed{s}" / "test_none.csv").is_file()]
        if not found:
            raise SystemExit(f"--demo-from: no seed{s}/test_none.csv under {roots}")
        (out / f"demo_seed{s}").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found[0], out / f"demo_seed{s}" / "test_none.csv")
        print(f"demo seed {s}: reusing {found[0]}")


def score(sub: Path, gt, seed: int) -> dict:
    """mAP@0.4 with/without class 14 and its bootstrap SE over test images (no gate)."""
    from cxrdet.classes import NO_FINDING
    from cxrdet.detections import Detections, detections_from_frame, detections_to_frame
    from cxrdet.formats.submission import read_submission
    from cxrdet.gate.rules import GatedScorer
    from cxrdet.metrics import evaluate_detections

    frame, ids = read_submission(sub, with_ids=True)
    found = detections_from_frame(frame[frame["class_id"] != NO_FINDING])
    dets = {i: found.get(i, Detections.empty()) for i in ids}
    res = evaluate_detections(gt, detections_to_frame(dets), pred_image_ids=list(dets))
    rng = np.random.default_rng(seed)
    n = int(gt["image_id"].nunique())
    scorer = GatedScorer(dets, {i: 1.0 for i in dets}, gt)
    boot = [scorer.score(0.0, 0.5, np.bincount(rng.integers(0, n, n), minlength=n))["map"] for _ in range(bq.N_BOOT)]
    return {"map": res.map, "map_no14": res.map_no14, "se": float(np.std(boot))}


def summarize(per: dict[str, dict[int, dict]]) -> list[dict]:
    """Mean/std over the seeds each variant finished; paired differences over the seeds it shares with the demo."""
    rows = []
    for v, by_seed in per.items():
        seeds = sorted(by_seed)
        if not seeds:
            continue
        m = [by_seed[s]["map"] for s in seeds]
        diff = [by_seed[s]["map"] - per["demo"][s]["map"] for s in seeds if s in per.get("demo", {})]
        std = (lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else float("nan"))
        rows.append({"variant": v, "seeds": seeds, "mean": float(np.mean(m)), "std": std(m), "per_seed": m,
                     "mean_no14": float(np.mean([by_seed[s]["map_no14"] for s in seeds])),
                     "max_se": max(by_seed[s]["se"] for s in seeds), "train_s": float(np.mean([by_seed[s]["train_s"] for s in seeds])),
                     "paired_diff": float(np.mean(diff)),
                     "paired_std": std(diff), "per_seed_diff": diff})
    return rows


def print_table(rows: list[dict], costs: dict, steps: dict, seeds: list[int]) -> None:
    print(f"\nmAP@0.4 (no gate, tta none), seeds {seeds}; paired: minus the demo recipe, seed by seed "
          "(a gain is real when its mean is well above std / sqrt(seeds))")
    print(f"{'variant':<26} {'s/step':>6} {'steps':>5} {'train s':>7}  {'mean':>6} {'std':>6} {'SE':>6} {'no14':>6}  "
          f"{'paired':>7} {'std':>6}  per seed")
    for r in rows:
        v = r["variant"]
        per = "  ".join(f"s{s} {a:.3f}" for s, a in zip(r["seeds"], r["per_seed"]))
        print(f"{v:<26} {costs[v]:6.3f} {steps[v]:5d} {r['train_s']:7.0f}  {r['mean']:6.4f} {r['std']:6.4f} {r['max_se']:6.4f} "
              f"{r['mean_no14']:6.4f}  {r['paired_diff']:+7.4f} {r['paired_std']:6.4f}  {per}")


def run_all(d: Path, plan, variants: list[str], steps: dict[str, int], args, deadline: float) -> dict[str, dict[int, dict]]:
    """Every (variant, seed) run, --parallel at a time, each scored as soon as it finishes (a run
    cut short keeps what finished); returns variant -> seed -> score for the runs that ran."""
    from cxrdet.formats.labels import read_labels

    # the first variant after the demo gets all its seeds first, then the others seed by seed:
    # a --deadline leaves out the last seeds of the others, never the main candidate's
    first, rest = variants[:2], variants[2:]
    jobs = [(v, s) for v in first for s in args.seeds] + [(v, s) for s in args.seeds for v in rest]
    gt = read_labels(d / "synth" / "test.csv")

    def job(j: tuple[str, int]) -> dict | None:
        sub = run_one(d, plan, j[0], steps[j[0]], j[1], args, deadline)
        if sub is None:
            return None
        result = score(sub, gt, j[1])
        timing = sub.with_name("train_seconds.json")  # absent for reused demo runs
        result["train_s"] = json.loads(timing.read_text())["seconds"] if timing.is_file() else float("nan")
        write_json(sub.with_name("score.json"), {"variant": j[0], "seed": j[1], "steps": steps[j[0]], **result})
        return result

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        scores = dict(zip(jobs, pool.map(job, jobs)))
    per = {v: {s: scores[(v, s)] for s in args.seeds if scores[(v, s)]} for v in variants}
    for v, done in per.items():
        if len(done) < len(args.seeds):
            print(f"{v}: seeds {sorted(done)} only (the others did not start before --deadline)")
    return per


def main(args: argparse.Namespace) -> int:
    plan = bq.QUICK if args.quick else bq.FULL
    out = Path(args.out)
    bq.open_out(out, args.overwrite, args.resume)  # a run cut short by --deadline or Ctrl-C goes on
    variants = args.variants if "demo" in args.variants else ["demo", *args.variants]
    d = Path(args.data) if args.data else out
    if not args.data:
        bq.prepare_data(bq.StageRunner(out), plan, 0, str(args.prepare_workers or args.workers))
    start = time.perf_counter()
    if args.costs:
        costs = {v: c for v, c in json.loads(Path(args.costs).read_text())["costs"].items() if v in variants}
    else:
        costs = cpu_costs(d, plan, variants, args)
    write_json(out / "costs.json", {"costs": costs, "threads": args.cost_threads, "plan_steps": plan.steps})
    if args.costs_only:
        return 0
    steps = steps_at_budget(costs, plan)
    if args.demo_from:
        reuse_demo_runs(args.demo_from, args.seeds, out)
    per = run_all(d, plan, variants, steps, args, start + args.deadline if args.deadline else 0.0)
    rows = summarize(per)
    print_table(rows, costs, steps, args.seeds)
    seconds = time.perf_counter() - start
    write_json(out / "results.json", {"quick": args.quick, "device": args.device, "seeds": args.seeds, "costs": costs,
                                      "steps": steps, "rows": rows, "seconds": round(seconds, 1),
                                      "variants": {v: VARIANTS[v][1] for v in variants}})
    print(f"wrote {out / 'results.json'} ({seconds:.0f} s){' (QUICK smoke run: not a measurement)' if args.quick else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
