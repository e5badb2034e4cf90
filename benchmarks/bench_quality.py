#!/usr/bin/env python3
"""Quality with its spread: mAP@0.4 of the demo's detector recipe over several training seeds.

One demo's figure is one training seed on 60 test images: two seeds of the same recipe differed
by 0.107 mAP, more than any effect we want to claim. This benchmark runs the demo's recipe
(`cxrdet demo`'s DemoPlan: light R18-FPN, 256 px, its schedule, fold 0 of 4 for out-of-fold
evidence) on ONE synthetic dataset for several training seeds, with a test set large enough
that the bootstrap standard error of mAP@0.4 over test images is below 0.02 (measured and
printed), and reports mean, standard deviation and per-seed mAP@0.4, with and without class 14.

Protocol (every stage is the real command, in-process, as the demo calls it; commands.txt lists them):
    synth (--seed-data) -> prepare train/test -> split 4 folds; then per training seed s:
    train fold 0 (seed s) -> infer fold 0 (out-of-fold evidence) -> train-gate (seed s) ->
    infer the test set (its prepared cache) with the gate at low 0 / high 1.01 (findings +
    class-14 row on every image; the image-level CSV holds P(abnormal)) with --tta hflip ->
    the demo's classifier -> its OOF probabilities -> train-gate with them -> infer the test set
    through that stacked gate and the classifier with --tta none. The tta none rows take that
    run's findings (the same detector on the same images) and the first gate's P(abnormal) on
    them, computed as infer does (gate_p): one detector pass fewer per seed.
    Rows, each for both TTA settings, are built from those predictions with cxrdet.gate.rules
    apply_gate and scored with cxrdet.metrics.evaluate_detections on the test labels as given:
      no gate                 the detector's findings only
      gate 0.08/0.95          the challenge's defaults
      gate tuned (all OOF)    the best grid pair on all OOF images (the old rule, in-sample)
      gate train-gate choice  the pair train-gate saved (cxrdet.gate.selection's rule)
      all-normal              every image `14 1 0 0 1 1` (no training; one figure)
    Bootstrap SE: 200 resamples of the test images (cxrdet.gate.rules.GatedScorer weights),
    per seed and row; the table prints the largest.

    python benchmarks/bench_quality.py                  # full run, about 45 min on 2 cores (2643 s, 2026-12-06)
    python benchmarks/bench_quality.py --quick          # smoke run: tiny data, 4 steps
    python benchmarks/bench_quality.py --seeds 0 1 2 3 --out data/bench_quality
    python benchmarks/bench_quality.py --resume         # go on with a run that was interrupted

Results: --out/results.json (every figure per seed and row), --out/quality.png (per-seed dots).

Measured figures (after / before tables with their spreads, stage timings): docs/quality.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrdet.classes import NO_FINDING  # noqa: E402
from cxrdet.demo import MARKER, DemoPlan, Runner, detector_recipe, fold_labels, prepare_out, write_all_normal  # noqa: E402
from cxrdet.detections import Detections, detections_from_frame, detections_to_frame  # noqa: E402
from cxrdet.formats.atomic import atomic_path, write_json  # noqa: E402
from cxrdet.formats.image_level import read_image_level  # noqa: E402
from cxrdet.formats.labels import read_labels  # noqa: E402
from cxrdet.formats.submission import read_submission  # noqa: E402
from cxrdet.gate.rules import DEFAULT_HIGH, DEFAULT_LOW, GatedScorer, apply_gate, tune_thresholds  # noqa: E402
from cxrdet.metrics import evaluate_detections  # noqa: E402

# 800 training images: fold 0 holds 196 out-of-fold images, just under the 200 train-gate's
# selection rule needs to tune at all (its choice rows are the defaults by that minimum; the
# "tuned (all OOF)" rows show what tuning without the rule costs); 1000 test images: bootstrap SE below 0.02 at the
# shipped recipe's mAP (~0.5; 500 images gave 0.026, and SE grows with mAP here).
FULL = DemoPlan(n_train=800, n_test=1000)
QUICK = DemoPlan(n_train=60, n_test=16, steps=4, warmup_steps=1)  # smoke only: 15 OOF images
QUICK_GATE_FOLDS = 3  # 15 OOF images hold too few of each class for the gate's default 5 folds
ROWS = ("no gate", "gate 0.08/0.95", "gate tuned (all OOF)", "gate train-gate choice")
TTAS = ("none", "hflip")
# the classifier's rows (tta none: the stacked gate's own test-set run): its evidence in the gate,
# and box rescoring by its probabilities (applied here with cxrdet.gate.rescore to that run's boxes)
CLF_ROWS = ("gate+clf 0.08/0.95", "gate+clf train-gate choice", "gate+clf 0.08/0.95 + rescore")
GAINS = {  # paired per seed: row - reference, both tta none
    "classifier evidence (0.08/0.95)": ("gate+clf 0.08/0.95", "gate 0.08/0.95"),
    "classifier evidence (train-gate choice)": ("gate+clf train-gate choice", "gate train-gate choice"),
    "rescoring on top": ("gate+clf 0.08/0.95 + rescore", "gate+clf 0.08/0.95"),
}
N_BOOT = 200  # SE to +-5% (relative) is enough to compare with 0.02
SE_GOAL = 0.02


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data/bench_quality", help="work folder (replaced on --overwrite)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="detector/gate training seeds (>= 3 for a spread)")
    p.add_argument("--seed-data", type=int, default=0, help="seed of the synthetic data and the split")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny data, 4 steps, seeds 0 1 (figures are noise)")
    p.add_argument("--workers", type=int, default=2, help="processes for preprocessing and data loading")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--resume", action="store_true",
                   help="go on with an interrupted run in --out (same flags): finished stages are kept, trainings continue")
    return p


class StageRunner(Runner):
    """The demo's Runner, plus --resume: a stage whose output file exists is not run again.

    A full run takes about 45 minutes; an interrupted one goes on from its last finished stage.
    Every output named here is written atomically at the end of its stage, so "exists" means "done"."""

    def __init__(self, out: Path, resume: bool = False) -> None:
        super().__init__(out)
        self.resume = resume
        # a training cut short continues from its last checkpoint (train's own --resume auto)
        self.resume_flags = ["--resume", "auto"] if resume else []

    def unless(self, done: Path, step: str, command: str, argv: list[str]) -> None:
        if self.resume and done.exists():
            print(f"\n=== demo: {step}: kept from the earlier run ({done} exists)", flush=True)
            return
        self(step, command, argv)


def open_out(out: Path, overwrite: bool, resume: bool) -> None:
    """The benchmark's work folder: kept as it is under --resume (if a benchmark made it), else new."""
    if not (resume and (out / MARKER).is_file()):
        prepare_out(out, overwrite)


def prepare_data(run: StageRunner, plan: DemoPlan, seed: int, workers: str) -> None:
    d = run.out
    run.unless(d / "synth" / "test.csv", "synthetic data", "synth", ["--out", str(d / "synth"), "--n-train", str(plan.n_train), "--n-test",
        str(plan.n_test), "--scale", str(plan.scale), "--seed", str(seed), "--workers", workers])
    for split in ("train", "test"):
        run.unless(d / "cache" / f"{split}_meta.csv", f"prepare {split}", "prepare", ["--dicom-dir", str(d / "synth" / split), "--out", str(d / "cache" / f"{split}.h5"),
            "--meta-out", str(d / "cache" / f"{split}_meta.csv"), "--size", str(plan.size), "--workers", workers])
    run.unless(d / "folds.csv", "split", "split", ["--labels", str(d / "synth" / "train.csv"), "--n-folds", str(plan.n_folds),
        "--seed", str(seed), "--out", str(d / "folds.csv")])


def train_seed(run: StageRunner, plan: DemoPlan, seed: int, workers: str, gate_folds: int = 5) -> Path:
    """Detector + gate for one seed; test-set predictions for both TTA settings. Returns the seed folder."""
    d, s = run.out, run.out / f"seed{seed}"
    labels, folds = d / "synth" / "train.csv", d / "folds.csv"
    run.unless(s / "detector" / "export" / "config.json", f"seed {seed}: train detector", "train", [
        "--out", str(s / "detector"), "--cache", str(d / "cache" / "train.h5"), "--labels", str(labels),
        "--folds", str(folds), "--fold", "0", *detector_recipe(plan), "--log-every-n-steps", "10", "--workers", workers, "--device", "cpu", "--seed", str(seed),
        *run.resume_flags])
    common = ["--model", str(s / "detector" / "export"), "--workers", workers, "--device", "cpu"]
    run.unless(s / "oof_fold0.csv", f"seed {seed}: out-of-fold detections", "infer", [*common, "--cache", str(d / "cache" / "train.h5"),
        "--folds", str(folds), "--fold", "0", "--out", str(s / "oof_fold0.csv")])
    gate_labels = fold_labels(labels, folds, 0, s / "labels_fold0.csv")
    run.unless(s / "gate" / "report.json", f"seed {seed}: train gate", "train-gate", ["--meta", str(d / "cache" / "train_meta.csv"), "--labels",
        str(gate_labels), "--out", str(s / "gate"), "--detections", str(s / "oof_fold0.csv"),
        "--detector-run", str(s / "detector"), "--seed", str(seed), "--workers", workers,
        "--n-folds", str(gate_folds)])
    # low 0 / high 1.01: every image keeps its findings and gets P(abnormal). tta none comes from
    # the stacked gate's run (classifier_seed): same detector, same images, same detections
    run.unless(s / "test_hflip_image_level.csv", f"seed {seed}: infer test, tta hflip", "infer", [*common, "--cache", str(d / "cache" / "test.h5"),
        "--gate", str(s / "gate"), "--low", "0", "--high", "1.01", "--tta", "hflip",
        "--image-level-out", str(s / "test_hflip_image_level.csv"), "--out", str(s / "test_hflip.csv")])
    classifier_seed(run, plan, seed, workers, gate_folds)
    return s


def classifier_seed(run: StageRunner, plan: DemoPlan, seed: int, workers: str, gate_folds: int) -> None:
    """The demo's classifier for one seed, its OOF probabilities, the stacked gate, and the test
    set through it (tta none; the image-level CSV then holds the classifier's clf_* columns)."""
    d, s = run.out, run.out / f"seed{seed}"
    run.unless(s / "classifier" / "export" / "config.json", f"seed {seed}: train classifier", "train-classifier", [
        "--out", str(s / "classifier"), "--cache", str(d / "cache" / "train.h5"), "--labels", str(d / "synth" / "train.csv"),
        "--folds", str(d / "folds.csv"), "--fold", "0", "--arch", plan.clf_arch, "--size", str(plan.clf_size),
        "--epochs", str(plan.clf_epochs), "--batch-size", str(plan.clf_batch_size), "--lr", str(plan.clf_lr),
        "--warmup-steps", str(plan.clf_warmup_steps), "--workers", workers,
        "--device", "cpu", "--seed", str(seed), *run.resume_flags])
    clf = str(s / "classifier" / "export")
    run.unless(s / "oof_probs_fold0.csv", f"seed {seed}: out-of-fold classifier probabilities", "classify", [
        "--model", clf, "--cache", str(d / "cache" / "train.h5"), "--folds", str(d / "folds.csv"), "--fold", "0",
        "--workers", workers, "--device", "cpu", "--out", str(s / "oof_probs_fold0.csv")])
    run.unless(s / "gate_clf" / "report.json", f"seed {seed}: train gate with classifier evidence", "train-gate", [
        "--meta", str(d / "cache" / "train_meta.csv"), "--labels", str(s / "labels_fold0.csv"), "--out", str(s / "gate_clf"),
        "--detections", str(s / "oof_fold0.csv"), "--detector-run", str(s / "detector"), "--classifier-probs",
        str(s / "oof_probs_fold0.csv"), "--seed", str(seed), "--workers", workers, "--n-folds", str(gate_folds)])
    run.unless(s / "test_clf_image_level.csv", f"seed {seed}: infer test through the stacked gate", "infer", [
        "--model", str(s / "detector" / "export"), "--workers", workers, "--device", "cpu", "--cache",
        str(d / "cache" / "test.h5"), "--gate", str(s / "gate_clf"), "--classifier", clf, "--low", "0", "--high", "1.01",
        "--tta", "none", "--rescore", "none", "--image-level-out", str(s / "test_clf_image_level.csv"),
        "--out", str(s / "test_clf.csv")])


def findings_and_p(sub: Path, image_level: Path) -> tuple[dict[str, Detections], dict[str, float]]:
    frame, ids = read_submission(sub, with_ids=True)
    dets = detections_from_frame(frame[frame["class_id"] != NO_FINDING])
    p = read_image_level(image_level).set_index("image_id")["p_abnormal"].astype(float).to_dict()
    return {i: dets.get(i, Detections.empty()) for i in ids}, p


def gate_p(gate_dir: Path, meta: Path, dets: dict[str, Detections]) -> dict[str, float]:
    """P(abnormal) of a gate trained without classifier evidence on given test-set findings.

    What `cxrdet infer --gate` computes (build_features on prepare's META and pixel features, as
    train-gate reads them), without running the detector again: the tta none findings are the
    stacked gate's run's, and a 1000-image detector pass is ~80 s per seed. The findings come from
    a submission CSV (scores to 4 decimals); the gate's det_* features round live scores the same
    way, so this equals infer's P (before that rounding, 26 of 1000 images of a seed differed by
    more than 0.001 and every mAP row still agreed to 1e-6)."""
    from cxrdet.gate.features import META_REQUIRED, build_features
    from cxrdet.gate.inputs import read_pixel_table, read_table
    from cxrdet.gate.model import GateClassifier

    table = read_table(meta, META_REQUIRED, "regenerate it with `cxrdet prepare --meta-out`")
    table = table[table["image_id"].isin(set(dets))]
    X = build_features(table, read_pixel_table(meta, None), dets)
    gate = GateClassifier.load(gate_dir)
    return dict(zip(X.index, gate.p_abnormal(X[list(gate.feature_names_)]).tolist()))


def test_predictions(s: Path, tta: str, meta: Path) -> tuple[dict[str, Detections], dict[str, float]]:
    """Findings and the plain gate's P(abnormal) on the test set for one TTA setting."""
    if tta == "hflip":
        return findings_and_p(s / "test_hflip.csv", s / "test_hflip_image_level.csv")
    dets, _ = findings_and_p(s / "test_clf.csv", s / "test_clf_image_level.csv")
    return dets, gate_p(s / "gate", meta, dets)


def row_pairs(s: Path, oof: tuple[dict, dict], train_labels: pd.DataFrame) -> dict[str, tuple[float, float] | None]:
    """(low, high) per gated row; None = no gate."""
    low, high, _ = tune_thresholds(*oof, train_labels)
    saved = json.loads((s / "gate" / "gate_schema.json").read_text())["thresholds"]
    return {"no gate": None, "gate 0.08/0.95": (DEFAULT_LOW, DEFAULT_HIGH),
            "gate tuned (all OOF)": (low, high), "gate train-gate choice": (saved["low"], saved["high"])}


def score_seed(s: Path, gt: pd.DataFrame, train_labels: pd.DataFrame, seed: int, meta: Path) -> dict:
    """mAP@0.4 (metric) and bootstrap SE (GatedScorer) of every row x TTA for one seed."""
    oof_frame = read_submission(s / "oof_fold0.csv")
    oof_dets = detections_from_frame(oof_frame[oof_frame["class_id"] != NO_FINDING])
    oof_p = pd.read_csv(s / "gate" / "oof_predictions.csv", dtype={"image_id": str}).set_index("image_id")["p_abnormal_oof"]
    oof_ids = list(oof_p.index)
    oof_gt = train_labels[train_labels["image_id"].isin(set(oof_ids))]
    pairs = row_pairs(s, ({i: oof_dets.get(i, Detections.empty()) for i in oof_ids}, oof_p.to_dict()), oof_gt)
    out = {"pairs": {k: v for k, v in pairs.items()}}
    rng = np.random.default_rng(seed)
    ids = list(pd.unique(gt["image_id"]))
    weights = [np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids)) for _ in range(N_BOOT)]
    for tta in TTAS:
        dets, p = test_predictions(s, tta, meta)
        if tta == "none":
            out["auroc_abnormal"] = {"gate | tta none": abnormal_auroc(gt, p)}
        for row, pair in pairs.items():
            # no gate = findings everywhere, no class-14 row: p = 1 with (0, 0.5) in the scorer
            pp, (low, high) = (p, pair) if pair else ({i: 1.0 for i in p}, (0.0, 0.5))
            gated = {i: apply_gate(d, pp[i], low, high) if pair else d for i, d in dets.items()}
            res = evaluate_detections(gt, detections_to_frame(gated), pred_image_ids=list(gated))
            scorer = GatedScorer(dets, pp, gt)
            boot = [scorer.score(low, high, w)["map"] for w in weights]
            out[f"{row} | tta {tta}"] = {"map": res.map, "map_no14": res.map_no14, "se": float(np.std(boot))}
    out.update(score_classifier_rows(s, gt, weights))
    out["auroc_abnormal"]["gate+clf | tta none"] = abnormal_auroc(gt, findings_and_p(
        s / "test_clf.csv", s / "test_clf_image_level.csv")[1])
    return out


def score_classifier_rows(s: Path, gt: pd.DataFrame, weights: list) -> dict:
    """CLF_ROWS for one seed: the stacked gate's P(abnormal) at the defaults and at train-gate's
    pair, and the defaults with each box rescored by the classifier's probability of its class."""
    from cxrdet.gate.rescore import rescore

    dets, p = findings_and_p(s / "test_clf.csv", s / "test_clf_image_level.csv")
    # read_image_level keeps the fixed columns only: the clf_* ones are read as they were written
    clf = pd.read_csv(s / "test_clf_image_level.csv", dtype={"image_id": str}).set_index("image_id")
    rows = clf[[c for c in clf.columns if c.startswith("clf_")]].astype(float).to_dict("index")
    assert rows and all(len(r) for r in rows.values()), "no clf_* columns: nothing to rescore by"
    rescored = {i: rescore(d, rows.get(i, {})) for i, d in dets.items()}
    saved = json.loads((s / "gate_clf" / "gate_schema.json").read_text())["thresholds"]
    variants = {"gate+clf 0.08/0.95": (dets, (DEFAULT_LOW, DEFAULT_HIGH)),
                "gate+clf train-gate choice": (dets, (saved["low"], saved["high"])),
                "gate+clf 0.08/0.95 + rescore": (rescored, (DEFAULT_LOW, DEFAULT_HIGH))}
    out = {}
    for row, (found, (low, high)) in variants.items():
        gated = {i: apply_gate(d, p[i], low, high) for i, d in found.items()}
        res = evaluate_detections(gt, detections_to_frame(gated), pred_image_ids=list(gated))
        scorer = GatedScorer(found, p, gt)
        boot = [scorer.score(low, high, w)["map"] for w in weights]
        out[f"{row} | tta none"] = {"map": res.map, "map_no14": res.map_no14, "se": float(np.std(boot))}
    return out


def abnormal_auroc(gt: pd.DataFrame, p_abnormal: dict[str, float]) -> float:
    """Image-level ROC AUC of P(abnormal) against 'a reader marked a finding'."""
    from sklearn.metrics import roc_auc_score

    p = pd.Series(p_abnormal, dtype=float)
    abnormal = gt.groupby("image_id")["class_id"].apply(lambda c: bool((c != NO_FINDING).any()))
    ids = [i for i in abnormal.index if i in p.index]
    return float(roc_auc_score(abnormal.loc[ids].astype(int), p.loc[ids]))


def summarize_rows(per_seed: dict[int, dict], baseline: dict) -> list[dict]:
    rows = [{"row": "all-normal baseline", "per_seed_map": [baseline["map"]], "per_seed_map_no14": [baseline["map_no14"]],
             "mean": baseline["map"], "std": 0.0, "mean_no14": baseline["map_no14"], "std_no14": 0.0,
             "max_se": float("nan")}]  # one prediction, not bootstrapped
    keys = [f"{row} | tta {tta}" for row in ROWS for tta in TTAS] + [f"{row} | tta none" for row in CLF_ROWS]
    for key in keys:
        m = [per_seed[s][key]["map"] for s in per_seed]
        m14 = [per_seed[s][key]["map_no14"] for s in per_seed]
        rows.append({"row": key, "per_seed_map": m, "per_seed_map_no14": m14, "mean": float(np.mean(m)),
                     "std": float(np.std(m, ddof=1)) if len(m) > 1 else float("nan"),
                     "mean_no14": float(np.mean(m14)),
                     "std_no14": float(np.std(m14, ddof=1)) if len(m14) > 1 else float("nan"),
                     "max_se": max(per_seed[s][key]["se"] for s in per_seed)})
    return rows


def print_table(rows: list[dict], seeds: list[int], n_test: int) -> None:
    print(f"\nmAP@0.4 on {n_test} synthetic test images, training seeds {seeds} (std: over seeds, ddof 1; "
          f"SE: bootstrap over test images, largest seed)")
    print(f"{'row':<42} {'mean':>7} {'std':>7} {'SE':>6}  {'no14 mean':>9} {'std':>7}  per seed (with 14 / without)")
    for r in rows:
        per = "  ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(r["per_seed_map"], r["per_seed_map_no14"]))
        print(f"{r['row']:<42} {r['mean']:7.4f} {r['std']:7.4f} {r['max_se']:6.4f}  {r['mean_no14']:9.4f} "
              f"{r['std_no14']:7.4f}  {per}")
    se = float(np.nanmax([r["max_se"] for r in rows]))
    print(f"largest bootstrap SE {se:.4f}: {'below' if se < SE_GOAL else 'NOT below'} the {SE_GOAL} goal")


def gains(per_seed: dict[int, dict]) -> dict:
    """Paired gains per seed (GAINS) and the AUROC of P(abnormal) with and without the classifier."""
    out = {}
    for name, (row, ref) in GAINS.items():
        diff = [per_seed[s][f"{row} | tta none"]["map"] - per_seed[s][f"{ref} | tta none"]["map"] for s in per_seed]
        out[name] = {"per_seed": diff, "mean": float(np.mean(diff)),
                     "std": float(np.std(diff, ddof=1)) if len(diff) > 1 else float("nan")}
    for key in ("gate | tta none", "gate+clf | tta none"):
        a = [per_seed[s]["auroc_abnormal"][key] for s in per_seed]
        out[f"AUROC p(abnormal), {key}"] = {"per_seed": a, "mean": float(np.mean(a)),
                                            "std": float(np.std(a, ddof=1)) if len(a) > 1 else float("nan")}
    return out


def print_gains(g: dict) -> None:
    print("\npaired over seeds (mAP@0.4 difference, tta none; a gain is real when |mean| is well above std / sqrt(seeds))")
    for name, e in g.items():
        sign = "" if name.startswith("AUROC") else "+"  # AUROCs are levels, the others differences
        per = "  ".join(f"{v:{sign}.3f}" for v in e["per_seed"])
        print(f"  {name:<44} mean {e['mean']:{sign}.4f}  std {e['std']:.4f}  per seed {per}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.5 * len(rows) + 1.5))
    for k, r in enumerate(rows):
        ax.plot(r["per_seed_map"], [k] * len(r["per_seed_map"]), "o", color="tab:blue", alpha=0.7)
        ax.plot([r["mean"]], [k], "|", color="black", markersize=18)
    ax.set_yticks(range(len(rows)), [r["row"] for r in rows], fontsize=8)
    ax.set_xlabel("mAP@0.4 on the test set (dots: training seeds, bar: mean)")
    ax.invert_yaxis()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    plan, seeds = (QUICK, [0, 1]) if args.quick else (FULL, args.seeds)
    out = Path(args.out)
    open_out(out, args.overwrite, args.resume)
    run, start, workers = StageRunner(out, args.resume), time.perf_counter(), str(args.workers)
    prepare_data(run, plan, args.seed_data, workers)
    gt, train_labels = read_labels(out / "synth" / "test.csv"), read_labels(out / "synth" / "train.csv")
    write_all_normal(out / "cache" / "test_meta.csv", out / "all_normal.csv")
    base = evaluate_detections(gt, read_submission(out / "all_normal.csv"))
    gate_folds = QUICK_GATE_FOLDS if args.quick else 5
    per_seed = {s: score_seed(train_seed(run, plan, s, workers, gate_folds), gt, train_labels, s,
                                out / "cache" / "test_meta.csv") for s in seeds}
    rows = summarize_rows(per_seed, {"map": base.map, "map_no14": base.map_no14})
    seconds = time.perf_counter() - start
    print_table(rows, seeds, int(gt["image_id"].nunique()))
    paired = gains(per_seed)
    print_gains(paired)
    print(f"total {seconds:.0f} s ({'QUICK smoke run: not a measurement' if args.quick else 'full run'})")
    write_json(out / "results.json", {"quick": args.quick, "plan": dataclasses.asdict(plan), "seeds": seeds,
                                      "seed_data": args.seed_data, "seconds": round(seconds, 1), "rows": rows, "gains": paired,
                                      "per_seed": {str(k): v for k, v in per_seed.items()}, "timings_s": run.timings})
    plot(rows, out / "quality.png")
    print(f"wrote {out / 'results.json'}, {out / 'quality.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
