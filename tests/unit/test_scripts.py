"""The setup / serve / test scripts and the CI entry point: syntax, and the order of the steps that matter."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = [ROOT / ".ci" / "run", *sorted((ROOT / "scripts").glob("*.sh"))]


def _code_lines(path: Path) -> list[str]:
    """Non-empty lines that are not comments, stripped."""
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _index(lines: list[str], pattern: str) -> int:
    for i, ln in enumerate(lines):
        if re.search(pattern, ln):
            return i
    raise AssertionError(f"no line matches {pattern!r}")


def test_the_expected_scripts_exist():
    names = {p.relative_to(ROOT).as_posix() for p in SCRIPTS}
    assert {".ci/run", "scripts/setup.sh", "scripts/serve.sh", "scripts/test.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_bash_syntax(script):
    bash = shutil.which("bash")
    assert bash, "bash is required"
    r = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_scripts_are_executable_bash_with_strict_mode(script):
    assert os.access(script, os.X_OK), f"chmod +x {script.relative_to(ROOT)}"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text


def test_ci_runs_the_readme_test_command_and_nothing_that_skips():
    lines = _code_lines(ROOT / ".ci" / "run")
    runs = [ln for ln in lines if "scripts/test.sh" in ln]
    assert runs, ".ci/run must call scripts/test.sh"
    args = shlex.split(runs[-1])
    assert args[:2] == ["bash", "scripts/test.sh"]
    for arg in args[2:]:  # at most verbosity flags: no -m / -k / --deselect / paths that narrow the suite
        assert re.fullmatch(r"-q+|-v+|--quiet|--verbose", arg), f".ci/run narrows the suite with {arg!r}"


def test_setup_installs_torch_before_the_package():
    lines = _code_lines(ROOT / "scripts" / "setup.sh")
    torch = _index(lines, r"pip_install\s+\"?torch==\$TORCH_VERSION|pip install\b.*torch==")
    package = _index(lines, r"(pip_install|pip install)\b.*-e\s+\"?\.\[test\]")
    assert torch < package
    assert re.search(r'^TORCH_VERSION="2\.13\.0"$', "\n".join(lines), re.M)


def test_test_sh_sets_up_before_pytest_and_exports_the_test_environment():
    lines = _code_lines(ROOT / "scripts" / "test.sh")
    setup = _index(lines, r"^bash scripts/setup\.sh$")
    pytest_line = _index(lines, r"^exec \.venv/bin/python -m pytest \"\$@\"$")
    assert setup < pytest_line
    text = "\n".join(lines)
    for var in ("ATLAS_TEST_REDIS_URL", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM"):
        assert re.search(rf"^export {var}=", text, re.M), var
    assert "redis://127.0.0.1:6379/13" in text


def test_serve_sh_sets_up_then_execs_serve_offline_by_default():
    lines = _code_lines(ROOT / "scripts" / "serve.sh")
    setup = _index(lines, r"^bash scripts/setup\.sh$")
    serve = _index(lines, r"^exec \.venv/bin/attention-atlas serve \"\$@\"$")
    assert setup < serve
    assert 'export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"' in lines
