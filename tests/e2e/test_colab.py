"""Colab smoke check that runs here: the first code cell installs the course where it is missing.

Colab opens a notebook straight from GitHub in /content, with its own packages (ipywidgets 7.7.1, torch, ...) and
without course_lib. The Colab-like environment that `make check-e2e` prepares is that state. The welcome notebook is
copied into an empty folder and executed there with nbclient: its setup cell must clone the course (from the URL
that pyproject.toml defines, overridden by COURSE_REPO_URL to this clone, since CI reaches no GitHub) and install
it with Python's pip; then every cell must run, and the welcome solutions (run second, reusing the clone as after a
runtime restart) must pass all their checks. The course is uninstalled again afterwards.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nbtext
from e2ecommon import ROOT, needs_e2e, notebook_client

from course_lib.checks.core import PASS_MARK

pytestmark = needs_e2e
WELCOME = ROOT / "notebooks" / "00_welcome.ipynb"
WELCOME_SOLUTIONS = ROOT / "notebooks" / "solutions" / "00_welcome_solutions.ipynb"


def _colab_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("COURSE_WIDGETS", "COURSE_NETBLOCK", "PYTHONPATH", "COURSE_REPO_URL")}
    env["COURSE_REPO_URL"] = ROOT.as_uri()
    return env


def _pip_uninstall_course() -> None:
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "inside-deepseek"],
                   capture_output=True, timeout=120)


def _execute(path: Path, env: dict):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    notebook_client(nb, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute(env=env)
    return nb


def _stdout(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("name") == "stdout")


def test_setup_cell_points_at_the_repository_in_pyproject():
    url = re.search(r'^Repository\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    setup = next(c for c in _notebook_cells(WELCOME) if c["cell_type"] == "code")
    assert url.rstrip("/") in "".join(setup["source"]), "the setup cell does not clone pyproject's Repository URL"
    assert "COURSE_REPO_URL" in "".join(setup["source"])


def _notebook_cells(path: Path) -> list[dict]:
    import json
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def test_colab_first_cell_installs_the_course(tmp_path):
    _pip_uninstall_course()
    env = _colab_env()
    probe = subprocess.run([sys.executable, "-c", "import course_lib"], cwd=tmp_path, env=env, capture_output=True)
    assert probe.returncode != 0, "course_lib is importable before the setup cell: this is not Colab's state"

    content = tmp_path / "content"                 # Colab's working folder: no clone of the course around it
    content.mkdir()
    shutil.copy(WELCOME, content / WELCOME.name)
    shutil.copy(WELCOME_SOLUTIONS, content / WELCOME_SOLUTIONS.name)
    try:
        nb = _execute(content / WELCOME.name, env)
        errors = [f"code cell {i}: {e}" for i, c in enumerate(nb.cells) if c.cell_type == "code"
                  for e in nbtext.errors(c.outputs)]
        assert not errors, "the welcome notebook failed on the simulated Colab:\n" + "\n".join(errors)
        assert (content / "inside-deepseek" / "course_lib").is_dir(), "the setup cell did not clone the course"
        where = subprocess.run([sys.executable, "-c", "import course_lib; print(course_lib.__file__)"],
                               cwd=tmp_path, env=env, capture_output=True, text=True)
        assert str(content / "inside-deepseek") in where.stdout, f"course_lib not installed from the clone: {where}"
        assert "ipywidgets 7.7.1" in _stdout(nb), "the environment report does not show Colab's ipywidgets 7.7.1"

        sol = _execute(content / WELCOME_SOLUTIONS.name, env)       # the clone is reused, as after a restart
        calls = sum(len(re.findall(r"\bchecks\.\w+\(", "".join(c.source))) for c in sol.cells if c.cell_type == "code")
        passed = _stdout(sol).count(PASS_MARK)
        assert calls and passed == calls, f"{passed} of {calls} checks passed in the welcome solutions on Colab:\n" \
                                          f"{_stdout(sol)[-2000:]}"
    finally:
        _pip_uninstall_course()
