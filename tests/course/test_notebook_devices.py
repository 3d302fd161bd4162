"""Each lesson notebook either runs its models on `get_device()` (the GPU where there is one) or says in its first cell,
in English and Chinese, that it stays on the CPU on purpose and why; the README lists exactly the second kind."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LESSONS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CPU_LINE = "**Device:** the CPU, on purpose"


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def uses_device(path: Path) -> bool:
    """True when some code cell uses the name `device` other than where it is assigned."""
    for cell in _cells(path):
        if cell["cell_type"] != "code":
            continue
        for line in "".join(cell["source"]).splitlines():
            code = line.split("#", 1)[0]
            # the variable read: not `torch.device(...)`, not a `device=` keyword or assignment, not an import
            if "import" not in code and re.search(r"(?<![.\w])device(?!\w)(?!\s*=[^=])", code):
                return True
    return False


def stays_on_cpu(path: Path) -> bool:
    return CPU_LINE in "".join(_cells(path)[0]["source"])


def test_helpers_tell_the_two_kinds_apart(tmp_path):
    def nb(cells):
        p = tmp_path / "x.ipynb"
        p.write_text(json.dumps({"cells": [{"cell_type": t, "source": [s]} for t, s in cells]}))
        return p
    assert uses_device(nb([("code", "device = get_device()\nx = torch.zeros(2, device=device)")]))
    assert not uses_device(nb([("code", "from course_lib.kit.device import get_device\ndevice = get_device()  # no")]))
    assert not uses_device(nb([("code", "with torch.device('meta'):\n    x = torch.zeros(2, device='cpu')")]))
    assert stays_on_cpu(nb([("markdown", f"{CPU_LINE}, also where a GPU is present")]))


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_a_notebook_uses_the_device_or_says_why_not(path):
    if uses_device(path):
        assert not stays_on_cpu(path), f"{path.name} uses get_device() but its first cell says it stays on the CPU"
        return
    assert stays_on_cpu(path), f"{path.name} never uses `device`: its first cell must say '{CPU_LINE}...' and why"
    assert "设备：" in "".join(_cells(path)[1]["source"]), f"{path.name}: the Chinese guide lacks the device line"


def test_readme_lists_the_notebooks_that_stay_on_the_cpu():
    on_cpu = [p.name[:2] for p in LESSONS if stays_on_cpu(p)]
    listed = ", ".join(on_cpu[:-1]) + " and " + on_cpu[-1]
    assert f"({listed} stay on the CPU on purpose" in (ROOT / "README.md").read_text()
    assert "（" + "、".join(on_cpu) + " 有意留在 CPU 上" in (ROOT / "README.zh-CN.md").read_text()
