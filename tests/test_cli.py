"""The `cxrdet` dispatcher: Ctrl-C says what each command leaves behind; file-system errors
(an output path that is a folder, a full disk) are a one-line message and exit 2, no traceback."""

from __future__ import annotations

import pytest

import cxrdet.inference.merge
import cxrdet.preprocess.prepare
from cxrdet.cli import DEFAULT_INTERRUPT_NOTE, main as cli, run_main


def _interrupt(args):
    raise KeyboardInterrupt


@pytest.mark.parametrize("command, module, expected", [
    ("merge-submissions", cxrdet.inference.merge, cxrdet.inference.merge.INTERRUPT_NOTE),
    ("prepare", cxrdet.preprocess.prepare, "rerun of the same command resumes"),
])
def test_interrupt_message_is_the_commands_own(monkeypatch, capsys, tmp_path, command, module, expected):
    monkeypatch.setattr(module, "main", _interrupt)
    argv = {"merge-submissions": [str(tmp_path / "a.csv"), "--out", str(tmp_path / "o.csv")],
            "prepare": ["--dicom-dir", str(tmp_path), "--out", str(tmp_path / "c.h5"),
                        "--meta-out", str(tmp_path / "m.csv")]}[command]
    assert cli([command, *argv]) == 130
    err = capsys.readouterr().err
    assert f"cxrdet {command}: interrupted; " in err and expected in err
    if command != "prepare":
        assert "resumes" not in err  # only prepare resumes


def test_interrupt_of_a_function_without_a_note_gets_the_neutral_default(capsys):
    assert run_main(_interrupt, None, prog="x") == 130
    assert capsys.readouterr().err.strip() == f"x: interrupted; {DEFAULT_INTERRUPT_NOTE}"


def _csvs(tmp_path):
    sub = tmp_path / "sub.csv"
    sub.write_text("image_id,PredictionString\na,14 1 0 0 1 1\n")
    gt = tmp_path / "gt.csv"
    gt.write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\na,No finding,14,R1,,,,\n")
    return sub, gt


def test_output_path_that_is_a_folder_is_a_message_and_exit_2(tmp_path, capsys):
    sub, gt = _csvs(tmp_path)
    taken = tmp_path / "already_a_folder"
    taken.mkdir()
    for argv in (["merge-submissions", str(sub), "--out", str(taken)],
                 ["evaluate", "--gt", str(gt), "--pred", str(sub), "--json", str(taken)]):
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"cxrdet {argv[0]}: error: " in err and "already_a_folder" in err
        assert "Traceback" not in err
    assert taken.is_dir() and not list(taken.iterdir())
