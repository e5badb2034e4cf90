"""The import-linter contracts of pyproject.toml: imports run one way, formats/ never imports torch.

``lint-imports`` is run as a subprocess on the repository, and on a copy of the package with an
upward import and a torch import planted, to show the contracts do break on them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# lint-imports is a console script; run its entry point with this interpreter (no PATH lookup)
LINT = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
        "--no-cache", "--no-logo"]


def lint(cwd: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH=cwd: the package of cwd is analysed, not the installed one
    return subprocess.run(LINT, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)})


def test_the_repository_keeps_every_contract():
    res = lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 kept, 0 broken" in res.stdout


def test_an_upward_import_and_torch_in_formats_break_the_contracts(tmp_path):
    shutil.copytree(ROOT / "cxrdet", tmp_path / "cxrdet", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert lint(tmp_path).returncode == 0  # the copy alone is clean
    # the detector reaching up into the gate (the gate consumes detector output, not the reverse)
    with open(tmp_path / "cxrdet" / "detector" / "predict.py", "a") as f:
        f.write("\nfrom cxrdet.gate import rules  # noqa: planted upward import\n")
    # a format module reaching torch through the detector package
    with open(tmp_path / "cxrdet" / "formats" / "folds.py", "a") as f:
        f.write("\nimport cxrdet.detector.model  # noqa: planted torch import\n")
    res = lint(tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "0 kept, 2 broken" in res.stdout
    assert "cxrdet.detector.predict -> cxrdet.gate.rules" in res.stdout
    assert "cxrdet.formats.folds -> cxrdet.detector.model" in res.stdout
    assert "torch" in res.stdout
