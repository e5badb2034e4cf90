"""Broken files through the real CLI: ``cxrdet.cli.main`` with argv (and ``python3 -m cxrdet`` for
a couple). Whatever the mutation, a command exits 0, or 2/3 with a message on stderr that names
the broken file, and never shows a traceback; a broken line is named by its number.

The mutated files come from the reader targets of ``fuzz_targets.py``; each command gets a few
derandomized examples (the long campaign is ``benchmarks/fuzz_readers.py``).
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_targets import LABELS, SUBMISSION, target
from fuzz_targets_classifier import NIH, PROBS

from cxrdet.cli import main as cli

OTHER_SHARD = "image_id,PredictionString\r\nx9,0 0.5 1 2 30 40\r\ny8,\r\n"
OTHER_PROBS = 'image_id,Aortic enlargement,"Nodule/Mass, any",No finding\r\nx9,0.5,0.5,0.5\r\n'
NIH_PROBS = "image_id,Cardiomegaly,Hernia\n00000001_000,0.9,0.1\n00000002_000,0.2,0.3\n00000003_000,0.1,0.8\n"

# name -> (reader target whose mutations the file gets, argv with {f} = the fuzzed file, {d} = the folder)
COMMANDS = {
    "evaluate --gt": ("labels", "evaluate --gt {f} --pred {d}/sub.csv"),
    "evaluate --pred": ("submission", "evaluate --gt {d}/train.csv --pred {f}"),
    "merge-submissions": ("merge_submission", "merge-submissions {d}/other.csv {f} --out {d}/merged.csv"),
    "merge-probabilities": ("probabilities", "merge-probabilities {d}/other_probs.csv {f} --out {d}/merged.csv"),
    "evaluate-classifier --labels": ("nih_labels", "evaluate-classifier --labels {f} --probs {d}/nih_probs.csv "
                                                   "--out {d}/ec --bootstrap 0"),
    "evaluate-classifier --probs": ("probabilities", "evaluate-classifier --labels {d}/train.csv --probs {f} "
                                                     "--out {d}/ec --bootstrap 0"),
    "split --labels": ("labels", "split --labels {f} --n-folds 2 --out {d}/FOLDS.csv"),
}
EXAMPLES = 25  # per command: the readers' own fuzz tests take the many examples; this checks the CLI path


def companions(folder: Path) -> None:
    """The valid files each command takes beside the fuzzed one."""
    for name, text in {"sub.csv": SUBMISSION, "train.csv": LABELS, "other.csv": OTHER_SHARD,
                       "other_probs.csv": OTHER_PROBS, "nih_probs.csv": NIH_PROBS}.items():
        (folder / name).write_text(text, newline="")


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``cxrdet ARGV`` in process: (exit code, stderr); stdout is dropped."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli(argv)
    return rc, err.getvalue()


def argv_of(template: str, fuzzed: Path, folder: Path) -> list[str]:
    return [part.format(f=fuzzed, d=folder) for part in template.split()]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_broken_files_through_the_cli_exit_2_naming_the_file(tmp_path, command):
    reader, template = COMMANDS[command]
    companions(tmp_path)
    fuzzed = tmp_path / "fuzzed.csv"
    fuzzed.write_bytes(target(reader).valid()[0])
    assert run_cli(argv_of(template, fuzzed, tmp_path))[0] == 0  # unbroken, the command runs
    codes = []

    @settings(derandomize=True, max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(data=st.data())
    def prop(data):
        fuzzed.write_bytes(data.draw(target(reader).strategy(), label=command))
        rc, err = run_cli(argv_of(template, fuzzed, tmp_path))
        codes.append(rc)
        assert "Traceback" not in err, err
        if rc != 0:
            assert rc in (2, 3), (rc, err)
            assert str(fuzzed) in err, err  # the message names the broken file

    prop()
    assert 2 in codes, codes  # the mutations do break the files


QUOTE = '"'
# (command, file text with a broken line 3, what the message says about it)
BROKEN_LINE_3 = [
    ("evaluate --gt", LABELS.replace("\na1,Cardio", f"\n{QUOTE}a1,Cardio"), "a quote"),
    ("evaluate --gt", LABELS.replace("R10,1000", "R10,-1000"), "negative coordinate"),
    ("evaluate --pred", SUBMISSION.replace("\r\nb2,", f"\r\n{QUOTE}b2,"), "a quote"),
    ("evaluate --pred", SUBMISSION.replace("14 1 0 0 1 1", "14 1 0 0 1"), "not a multiple of 6"),
    ("merge-submissions", SUBMISSION.replace("\r\nb2,", f"\r\n{QUOTE}b2,"), "a quote"),
    ("merge-submissions", SUBMISSION.replace("14 1 0 0 1 1", "14 1.5 0 0 1 1"), "confidence 1.5"),
    ("merge-probabilities", PROBS.replace("\r\nb2,1", "\r\nb2,1.5"), "in [0, 1]"),
    ("evaluate-classifier --labels", NIH.replace("\n00000001_001", f"\n{QUOTE}00000001_001"), "a quote"),
    ("evaluate-classifier --labels", NIH.replace("Cardiomegaly|Emphysema", "Cardiomegaly||Emphysema"),
     "empty finding"),
    ("evaluate-classifier --probs", PROBS.replace("\r\nb2,", f"\r\n{QUOTE}b2,"), "a quote"),
    ("split --labels", LABELS.replace("\na1,Cardio", f"\n{QUOTE}a1,Cardio"), "a quote"),
]


@pytest.mark.parametrize("command, text, says", BROKEN_LINE_3)
def test_a_broken_line_is_named_by_its_number(tmp_path, command, text, says):
    companions(tmp_path)
    fuzzed = tmp_path / "fuzzed.csv"
    fuzzed.write_bytes(text.encode())
    rc, err = run_cli(argv_of(COMMANDS[command][1], fuzzed, tmp_path))
    assert rc == 2 and "Traceback" not in err, err
    assert re.search(rf"{re.escape(str(fuzzed))}(:| line )3\b", err) and says in err, err


@pytest.mark.parametrize("data, says", [
    (LABELS.replace("\nb2,", '\n"b2,').encode(), ":4: a quote"),
    (LABELS.encode()[:60] + b"\xff\xfe" + LABELS.encode()[60:], ":2: not UTF-8 text"),
])
def test_python_m_cxrdet_prints_the_file_and_line_and_no_traceback(tmp_path, data, says):
    companions(tmp_path)
    fuzzed = tmp_path / "fuzzed.csv"
    fuzzed.write_bytes(data)
    proc = subprocess.run([sys.executable, "-m", "cxrdet", *argv_of(COMMANDS["evaluate --gt"][1], fuzzed, tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"cxrdet evaluate: error: {fuzzed}{says}" in proc.stderr, proc.stderr
