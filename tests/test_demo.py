"""`cxrdet demo` plumbing: the output folder rules, the baseline and fold helpers, the step runner.
(The pipeline the demo chains is exercised end to end by tests/test_e2e_infer.py.)"""

from __future__ import annotations

import pandas as pd
import pytest

from cxrdet.cli import main as cli
from cxrdet.demo import MARKER, QUICK, DemoPlan, Runner, fold_labels, prepare_out, write_all_normal
from cxrdet.errors import UserError


def test_out_folder_is_never_taken_over_unless_the_demo_made_it(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    with pytest.raises(UserError, match="not made by `cxrdet demo`"):
        prepare_out(foreign, overwrite=True)
    assert (foreign / "precious.txt").read_text() == "keep"

    demo = tmp_path / "demo"
    prepare_out(demo, overwrite=False)
    assert (demo / MARKER).exists()
    (demo / "old.csv").write_text("x")
    with pytest.raises(UserError, match="--overwrite"):
        prepare_out(demo, overwrite=False)
    prepare_out(demo, overwrite=True)
    assert not (demo / "old.csv").exists() and (demo / MARKER).exists()


def test_all_normal_baseline_and_fold_labels(tmp_path):
    pd.DataFrame({"image_id": ["b", "a"], "rows": [10, 20], "columns": [5, 6]}).to_csv(tmp_path / "meta.csv", index=False)
    sub = write_all_normal(tmp_path / "meta.csv", tmp_path / "base" / "all_normal.csv")
    assert sub.read_text().splitlines() == ["image_id,PredictionString", "a,14 1 0 0 1 1", "b,14 1 0 0 1 1"]

    labels = tmp_path / "train.csv"
    labels.write_text(
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"
        "a,No finding,14,R1,,,,\n"
        "b,Cardiomegaly,3,R2,10,20,30,40\n"
        "c,No finding,14,R3,,,,\n"
    )
    pd.DataFrame({"image_id": ["a", "b", "c"], "fold": [0, 0, 1]}).to_csv(tmp_path / "folds.csv", index=False)
    out = pd.read_csv(fold_labels(labels, tmp_path / "folds.csv", 0, tmp_path / "f0.csv"), dtype={"image_id": str})
    assert out["image_id"].tolist() == ["a", "b"]
    assert out["x_min"].isna().tolist() == [True, False]  # empty coordinates stay empty, not 0


def test_runner_logs_the_command_and_stops_on_a_failed_step(tmp_path, capsys):
    run = Runner(tmp_path)
    gt = tmp_path / "gt.csv"
    gt.write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\na,No finding,14,R1,,,,\n")
    pred = tmp_path / "pred.csv"
    pred.write_text("image_id,PredictionString\na,14 1 0 0 1 1\n")
    run("score", "evaluate", ["--gt", str(gt), "--pred", str(pred), "--json", str(tmp_path / "m.json")])
    assert "score" in run.timings
    assert (tmp_path / "commands.txt").read_text().startswith("cxrdet evaluate --gt ")
    with pytest.raises(UserError):  # a missing prediction file stops the demo with a message
        run("bad", "evaluate", ["--gt", str(gt), "--pred", str(tmp_path / "missing.csv")])


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def fake_metrics(out) -> None:
    """The metrics files the demo reads back, as its evaluate steps would write them."""
    import json

    for sub in ("eval", "eval_clf", "eval_clf_rescored", "baseline"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        (out / sub / "metrics.json").write_text(json.dumps({"map": 0.5, "map_no14": 0.4, "n_images": 3,
                                                            "image_auc": {"abnormal": 0.9}}))
    (out / "gate_clf").mkdir(parents=True, exist_ok=True)
    (out / "gate_clf" / "gate_schema.json").write_text(json.dumps({"rescore": {"choice": "none", "reason": "few"}}))
    (out / "eval_classifier").mkdir(parents=True, exist_ok=True)
    (out / "eval_classifier" / "metrics.json").write_text(json.dumps({
        "macro_auroc": 0.7, "per_class": {"abnormal": {"auroc": 0.8}},
        "cam": {"pointing_game": {"overall": {"pairs": 4, "hit_rate": 0.5, "chance": 0.1}},
                "heatmap_box_map": {"map_no14": 0.05}}}))


def _recorded_argvs(out, plan) -> dict[str, list[str]]:
    """The argv of every step ``run_pipeline`` runs for ``plan`` (nothing is executed)."""
    import json

    import cxrdet.demo as demo

    steps: dict[str, list[str]] = {}

    def record(step, command, argv, ok=(0,)):
        steps[step] = [str(a) for a in argv]

    fake_metrics(out)
    record.out = out
    args = demo.get_args_parser().parse_args(["--out", str(out), "--device", "cpu"])
    saved = demo.fold_labels, demo.write_all_normal
    demo.fold_labels, demo.write_all_normal = (lambda *a: a[-1]), (lambda *a: a[-1])
    try:
        demo.run_pipeline(args, plan, record)
    finally:
        demo.fold_labels, demo.write_all_normal = saved
    return steps


def test_quick_plan_is_smaller_and_bad_usage_exits_2(tmp_path, capsys):
    # the commands the quick demo runs ask for fewer images and steps than the full demo's
    argvs = {name: _recorded_argvs(tmp_path / name, plan) for name, plan in (("full", DemoPlan()), ("quick", QUICK))}
    for step, flag in (("synthetic data", "--n-train"), ("train detector", "--max-steps")):
        full, quick = (float(_flag(argvs[name][step], flag)) for name in ("full", "quick"))
        assert quick < full, (step, flag)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("not a demo folder")
    assert cli(["demo", "--out", str(foreign)]) == 2
    assert "not made by `cxrdet demo`" in capsys.readouterr().err


def test_demo_steps_speak_the_current_flags(tmp_path, monkeypatch):
    """Every step's argv parses with its command's own parser; the detector keeps the same run settings."""
    import argparse
    import importlib
    import json

    import cxrdet.demo as demo
    from cxrdet.cli import COMMANDS
    from cxrdet.detector.train import resolve_config

    parsed: dict[str, argparse.Namespace] = {}

    def record(step, command, argv, ok=(0,)):
        parsed[step] = importlib.import_module(COMMANDS[command][0]).get_args_parser().parse_args(argv)  # exit 2 on a bad flag

    fake_metrics(tmp_path)
    monkeypatch.setattr(demo, "fold_labels", lambda *a: a[-1])
    monkeypatch.setattr(demo, "write_all_normal", lambda *a: a[-1])
    record.out = tmp_path
    args = demo.get_args_parser().parse_args(["--out", str(tmp_path), "--device", "cpu"])
    scores = demo.run_pipeline(args, DemoPlan(), record)
    assert scores["map"] == 0.5 and scores["rescore_auto"] == {"choice": "none", "reason": "few"}  # the stacked gate's
    split, train = parsed["split"], parsed["train detector"]
    assert (split.n_folds, split.seed) == (4, 0)
    cfg, _ = resolve_config(train)
    assert (cfg.model, cfg.accelerator, cfg.devices, cfg.seed) == ("fasterrcnn_resnet18_fpn", "cpu", "1", 0)
    # the small proposal/RoI budgets bench_recipe.py measured (+0.26 mAP at equal CPU time), not COCO's
    assert (cfg.rpn_pre_nms_top_n_train, cfg.rpn_post_nms_top_n_train, cfg.box_batch_size_per_image) == (1000, 500, 128)
    assert (cfg.max_steps, cfg.warmup_steps) == (675, 51)
    assert (cfg.rpn_pre_nms_top_n_test, cfg.rpn_post_nms_top_n_test) == (1000, 300)  # 300 scored level with 1000, 1.7x faster
    test_run = parsed["infer on the held-out test set"]
    assert (test_run.device, test_run.vis_conf, test_run.conf) == ("cpu", 0.15, None)  # submission keeps every box
    assert parsed["train gate + tune thresholds"].seed == 0
    # the classifier's steps: out-of-fold probabilities feed the second gate, the stacked runs use them
    clf = parsed["train classifier"]
    assert (clf.arch, clf.fold, clf.size) == ("resnet18", 0, 128)
    assert parsed["out-of-fold classifier probabilities (fold 0)"].fold == 0
    stacked_gate = parsed["train gate with classifier evidence"]
    assert stacked_gate.classifier_probs.endswith("oof_probs_fold0.csv") and stacked_gate.out.endswith("gate_clf")
    plain, rescored = parsed["infer with the stacked gate"], parsed["infer with the stacked gate + rescoring"]
    assert plain.classifier == rescored.classifier and (plain.rescore, rescored.rescore) == ("none", "classifier")
    assert plain.tta == test_run.tta == "hflip" and plain.gate.endswith("gate_clf")
    cams = parsed["Grad-CAM heatmaps of the test set"]
    assert cams.cam_raw and cams.cam_classes == "top3"


def test_the_demo_trainer_runs_the_planned_steps(tmp_path):
    """The Trainer the demo's train command builds stops at the plan's steps, not at an epoch count."""
    from cxrdet.detector.train import build_trainer, get_args_parser, resolve_config

    for plan in (DemoPlan(), QUICK):
        argv = _recorded_argvs(tmp_path / str(plan.steps), plan)["train detector"]
        cfg, _ = resolve_config(get_args_parser().parse_args(argv))
        trainer = build_trainer(cfg, tmp_path / "ckpt")
        assert trainer.max_steps == plan.steps and trainer.max_epochs == -1  # no epoch limit ends it first
