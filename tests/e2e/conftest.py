"""Fixtures of the end-to-end checks (run by `make check-e2e`, which prepares their environment first).

Tests that need the prepared environment (Debian's Chromium, the Colab-like ipywidgets-7.7.1 environment with
Playwright) are skipped unless COURSE_E2E=1, which `make check-e2e` sets. The offline proof needs nothing extra and
also runs in `make test`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "e2e"
sys.path.insert(0, str(Path(__file__).resolve().parent))   # tests here import nbtext


def all_notebooks() -> list[Path]:
    """Every notebook of the course, solutions included, in the order a learner meets them (new ones are picked up)."""
    nbs = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")) + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))
    only = os.environ.get("COURSE_E2E_ONLY")           # e.g. COURSE_E2E_ONLY=03 while working on notebook 03
    return [p for p in nbs if not only or any(k in p.name for k in only.split(","))]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def e2e_enabled() -> bool:
    return os.environ.get("COURSE_E2E") == "1"


needs_e2e = pytest.mark.skipif(not e2e_enabled(), reason="end-to-end check: run `make check-e2e`")


def pytest_collection_modifyitems(config, items):
    # The browser test must run before the determinism test that compares its recorded outputs.
    order = {"test_browser.py": 0, "test_determinism.py": 1}
    items.sort(key=lambda it: order.get(Path(str(it.fspath)).name, -1))
