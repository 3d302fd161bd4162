"""End-to-end checks (run by `make check-e2e`, which prepares their environment first; see e2ecommon.py).

Tests that need the prepared environment (Debian's Chromium, the Colab-like ipywidgets-7.7.1 environment with
Playwright) are skipped unless COURSE_E2E=1, which `make check-e2e` sets. The offline proof, the comparison rules and
the widget helpers need nothing extra and also run in `make test`. At the end each check's runtime is printed.
"""
import os
from collections import defaultdict
from pathlib import Path

_SECONDS: dict[str, float] = defaultdict(float)


def pytest_collection_modifyitems(config, items):
    # The browser run must come before the determinism test that compares its recorded outputs with nbval's.
    order = {"test_browser.py": 1, "test_determinism.py": 2}
    items.sort(key=lambda it: order.get(Path(str(it.fspath)).name, 0))


_RAN: set[str] = set()


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.startswith("tests/e2e/"):
        _SECONDS[Path(path).stem] += report.duration
        if report.when == "call":
            _RAN.add(Path(path).stem)


def pytest_terminal_summary(terminalreporter):
    ran = {name: s for name, s in _SECONDS.items() if name in _RAN}
    if ran:
        terminalreporter.write_line("end-to-end check runtimes (this run): " + ", ".join(
            f"{name.removeprefix('test_')} {s:.0f} s" for name, s in ran.items()))

if os.environ.get("COURSE_E2E") != "1":
    # In `make test` only the checks that need nothing extra are collected (offline proof, comparison rules, helpers).
    collect_ignore = ["test_browser.py", "test_determinism.py", "test_ipywidgets7.py", "test_colab.py"]
