"""Paths and switches shared by the end-to-end checks."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "e2e"          # git-ignored: screenshots, recorded outputs, server logs
NBVAL_OUTPUTS = Path(os.environ.get("COURSE_NB_OUTPUTS", ROOT / "artifacts" / "nbval_outputs"))
BROWSER_OUTPUTS = ARTIFACTS / "browser_outputs"


def all_notebooks() -> list[Path]:
    """Every notebook of the course, solutions included, in the order a learner meets them (new ones are picked up)."""
    nbs = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")) + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))
    only = os.environ.get("COURSE_E2E_ONLY")           # e.g. COURSE_E2E_ONLY=03 while working on notebook 03
    return [p for p in nbs if not only or any(k in p.name for k in only.split(","))]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def record_name(notebook: str) -> str:
    """File name of a notebook's recorded outputs (the root conftest.py writes nbval's under the same name)."""
    return notebook.replace("/", "__") + ".json"


def e2e_enabled() -> bool:
    return os.environ.get("COURSE_E2E") == "1"


needs_e2e = pytest.mark.skipif(not e2e_enabled(), reason="end-to-end check: run `make check-e2e`")
