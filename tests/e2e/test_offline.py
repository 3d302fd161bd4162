"""Proof that `make test` executes the notebooks offline.

The root conftest.py loads tools/e2e/netblock/sitecustomize.py into every kernel nbval starts. Here a probe
notebook, executed by nbval exactly as `make test` executes the course's notebooks, tries to reach PyPI from the
kernel and from a Python child process of the kernel, and asserts both are blocked while loopback still works.
The same probe with the block switched off (COURSE_NETBLOCK=0) must fail: that proves the pass comes from the block.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from e2ecommon import ARTIFACTS, ROOT

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nbval") is None, reason="needs nbval (the test extra)")

PROBE_CELLS = [
    # the kernel itself (urllib, as a dataset or model-hub download would do)
    """import socket, subprocess, sys, urllib.request
try:
    urllib.request.urlopen("https://pypi.org/simple/", timeout=10)
    outcome = "connected"
except Exception as exc:
    outcome = type(getattr(exc, "reason", exc)).__name__
print("kernel:", outcome)
assert outcome == "NetworkBlocked", outcome""",
    # a Python process the notebook starts (pip, a worker) inherits the block
    """child = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('pypi.org', 443), 10)"],
                       capture_output=True, text=True, timeout=60)
print("child:", child.stderr.strip().splitlines()[-1] if child.stderr.strip() else "connected")
assert child.returncode != 0 and "NetworkBlocked" in child.stderr""",
    # loopback stays open (Jupyter's own channels, a local test server)
    """server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
socket.create_connection(server.getsockname(), timeout=5).close(); server.close()
print("loopback: ok")""",
]


def _probe_notebook() -> str:
    folder = ARTIFACTS / "offline_probe"      # under the repo, so the root conftest.py applies as in `make test`
    folder.mkdir(parents=True, exist_ok=True)
    cells = [{"cell_type": "code", "execution_count": None, "id": f"probe-{i}", "metadata": {}, "outputs": [],
              "source": src} for i, src in enumerate(PROBE_CELLS)]
    nb = {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                      "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}
    path = folder / "probe.ipynb"
    path.write_text(json.dumps(nb))
    return str(path.relative_to(ROOT))


def _run_nbval(notebook: str, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, **env}
    # The kernels get the block from the root conftest.py alone: drop a netblock folder this process inherited, keep
    # the rest of PYTHONPATH (where pytest and nbval may be installed).
    netblock = str(ROOT / "tools" / "e2e" / "netblock")
    kept = [p for p in env.pop("PYTHONPATH", "").split(os.pathsep) if p and os.path.abspath(p) != netblock]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    return subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-cell-timeout=120", "-q",
                           "-p", "no:cacheprovider", notebook], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_nbval_kernels_cannot_reach_the_network():
    run = _run_nbval(_probe_notebook(), COURSE_NB_OUTPUTS=str(ARTIFACTS / "offline_probe" / "outputs"))
    assert run.returncode == 0, f"the probe notebook reached the network under nbval:\n{run.stdout[-3000:]}"


def test_probe_fails_without_the_block():
    run = _run_nbval(_probe_notebook(), COURSE_NETBLOCK="0",
                     COURSE_NB_OUTPUTS=str(ARTIFACTS / "offline_probe" / "outputs"))
    assert run.returncode != 0, "the probe passed with the block switched off: it proves nothing"
    assert "outcome" in run.stdout and "NetworkBlocked" in run.stdout, (
        f"nbval did not get as far as the probe cell, so this failure proves nothing:\n{run.stdout[-3000:]}")
