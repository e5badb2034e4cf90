"""One CLI vocabulary: the same flag means the same thing (and has the same default) in every command."""

from __future__ import annotations

import argparse
import importlib

from cxrdet.cli import COMMANDS
from cxrdet.detector.config import DetectorConfig
from cxrdet.flags import DEFAULT_SEED


def _actions(name: str) -> dict[str, argparse.Action]:
    parser = importlib.import_module(COMMANDS[name][0]).get_args_parser()
    return {opt: a for a in parser._actions for opt in a.option_strings}


def test_every_seed_defaults_to_the_one_default():
    seeded = {name: _actions(name)["--seed"] for name in COMMANDS if "--seed" in _actions(name)}
    assert set(seeded) == {"synth", "split", "train", "train-gate", "demo"}
    for name, action in seeded.items():
        # train's flags default to None: its DetectorConfig holds the value (resume keeps the run's)
        default = DetectorConfig().seed if name == "train" else action.default
        assert default == DEFAULT_SEED == 0, name


def test_folds_is_always_a_path_and_model_always_an_artifact_folder():
    for name in COMMANDS:
        actions = _actions(name)
        folds = actions.get("--folds")
        if folds is not None and not folds.help == argparse.SUPPRESS:
            assert folds.type in (None, str) and "FOLDS.csv" in folds.help, name
        model = actions.get("--model")
        if model is not None and model.help != argparse.SUPPRESS:
            assert model.choices is None and model.type in (None, str), name  # a folder, not an architecture
    assert _actions("split")["--n-folds"].type is int and _actions("train-gate")["--n-folds"].type is int
