"""Shared pytest set-up for unit tests and notebook runs (nbval).

Also records, for every notebook nbval executes, its wall time (kernel start + all cells) and the kernel's peak
memory (VmHWM), and writes them to the JSON file named by COURSE_NB_REPORT (.ci/run prints them as a table).

When nbval runs notebooks, their kernels run OFFLINE: tools/e2e/netblock/sitecustomize.py is put on the kernels'
PYTHONPATH and blocks every non-local connection (COURSE_NETBLOCK=0 turns this off). The text outputs of every
executed cell are written to artifacts/nbval_outputs/ (COURSE_NB_OUTPUTS names another folder), where the browser
test (tests/e2e) compares them with a second execution of the same notebook: the determinism check.
"""
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

# Notebook kernels inherit this environment: widgets draw their static fallback (there is no frontend under nbval),
# and hashing is fixed so printed outputs are reproducible.
os.environ.setdefault("COURSE_WIDGETS", "static")
os.environ.setdefault("PYTHONHASHSEED", "0")

# Reference code that is fetched, not installed (tools/fetch_refs.py): the tests that compare with it import it from
# build/refs/ and skip where it is missing.
for _ref in sorted((Path(__file__).resolve().parent / "build" / "refs").glob("*-*")):
    if _ref.is_dir() and not _ref.name.endswith(".part") and str(_ref) not in sys.path:
        sys.path.append(str(_ref))

_NOTEBOOKS: dict[str, dict] = {}
_OUTPUTS: dict[str, dict[int, dict]] = {}     # notebook -> code-cell number -> {"source", "outputs"}
_ROOT = Path(__file__).resolve().parent
NETBLOCK_DIR = _ROOT / "tools" / "e2e" / "netblock"


def pytest_configure(config):
    nbval_on = getattr(config.option, "nbval_lax", False) or getattr(config.option, "nbval", False)
    if nbval_on and os.environ.setdefault("COURSE_NETBLOCK", "1") == "1":
        # Only kernels started from now on see this (they inherit os.environ); this pytest process stays as it is.
        paths = [str(NETBLOCK_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


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
        outs = getattr(item, "test_outputs", None)
        if outs is not None and hasattr(item, "cell_num"):
            _OUTPUTS.setdefault(nb, {})[item.cell_num] = {"source": item.cell.source,
                                                           "outputs": [_text_only(o) for o in outs]}
    yield


def _text_only(output) -> dict:
    """An output without metadata, with images replaced by a short marker (the records hold text, not pictures)."""
    out = {k: v for k, v in output.items() if k != "metadata"}
    if "data" in out:
        out["data"] = {m: (f"<{m}>" if m.startswith("image/") else v) for m, v in out["data"].items()}
    return out


def _write_outputs() -> None:
    folder = Path(os.environ.get("COURSE_NB_OUTPUTS", _ROOT / "artifacts" / "nbval_outputs"))
    for nb, cells in _OUTPUTS.items():
        path = _ROOT / nb
        source = path.read_bytes() if path.exists() else b""
        record = {"notebook": nb, "notebook_sha256": hashlib.sha256(source).hexdigest(),
                  "failed": _NOTEBOOKS.get(nb, {}).get("failed", False),
                  "cells": [cells[i] for i in sorted(cells)]}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / (nb.replace("/", "__") + ".json")).write_text(json.dumps(record, indent=1, ensure_ascii=False))


def pytest_sessionfinish(session, exitstatus):
    if _OUTPUTS:
        _write_outputs()
    target = os.environ.get("COURSE_NB_REPORT")
    if target and _NOTEBOOKS:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(_NOTEBOOKS, indent=1))
