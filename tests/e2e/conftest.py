"""End-to-end checks (run by `make check-e2e`, which prepares their environment first; see e2ecommon.py).

Tests that need the prepared environment (Debian's Chromium, the Colab-like ipywidgets-7.7.1 environment with
Playwright) are skipped unless COURSE_E2E=1, which `make check-e2e` sets. The offline proof needs nothing extra and
runs in `make test`.
"""
from pathlib import Path


def pytest_collection_modifyitems(config, items):
    # The browser run must come before the determinism test that compares its recorded outputs with nbval's.
    order = {"test_browser.py": 1, "test_determinism.py": 2}
    items.sort(key=lambda it: order.get(Path(str(it.fspath)).name, 0))
