"""Shared pytest set-up for unit tests and notebook runs (nbval).

Also records, for every notebook nbval executes, its wall time (kernel start + all cells) and the kernel's peak
memory (VmHWM), and writes them to the JSON file named by COURSE_NB_REPORT (.ci/run prints them as a table).
"""
import json
import os
from pathlib import Path

import pytest

# Notebook kernels inherit this environment: widgets draw their static fallback (there is no frontend under nbval),
# and hashing is fixed so printed outputs are reproducible.
os.environ.setdefault("COURSE_WIDGETS", "static")
os.environ.setdefault("PYTHONHASHSEED", "0")

_NOTEBOOKS: dict[str, dict] = {}


def _notebook_of(nodeid: str) -> str | None:
    path = nodeid.split("::")[0]
    return path if path.endswith(".ipynb") else None


def _kernel_peak_mb(item) -> float | None:
    try:
        pid = item.parent.kernel.km.provisioner.process.pid
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except Exception:  # no /proc (macOS), kernel already gone, or nbval internals changed: just skip the number
        return None
    return None


def pytest_runtest_logreport(report):
    nb = _notebook_of(report.nodeid)
    if nb is None:
        return
    rec = _NOTEBOOKS.setdefault(nb, {"seconds": 0.0, "peak_mb": None, "cells": 0, "failed": False})
    rec["seconds"] += report.duration
    if report.when == "call":
        rec["cells"] += 1
    rec["failed"] |= report.failed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    nb = _notebook_of(item.nodeid)
    if nb is not None:
        peak = _kernel_peak_mb(item)
        rec = _NOTEBOOKS.setdefault(nb, {"seconds": 0.0, "peak_mb": None, "cells": 0, "failed": False})
        if peak is not None:
            rec["peak_mb"] = max(rec["peak_mb"] or 0.0, peak)
    yield


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get("COURSE_NB_REPORT")
    if target and _NOTEBOOKS:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(_NOTEBOOKS, indent=1))
