"""Each lesson notebook executed twice prints the same numbers.

Run 1 is nbval's in `make test` (offline, static widget previews), recorded by the root conftest.py into
artifacts/nbval_outputs/. Run 2 is the browser's (tests/e2e/test_browser.py, live widgets), recorded into
artifacts/e2e/browser_outputs/. Per code cell the printed text must be identical after masking wall-clock times
(tests/e2e/nbtext.py says exactly what is masked), and both runs must show the same number of figures. Cells that
draw a widget are left out of the text comparison: one run draws static previews, the other live controls.
Only numbers are masked: a line that states a timing and has other words in each run (a verdict chosen by the
machine's speed) is reported as such, and so is a line that judges a timing in words even where both runs agree.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path

import pytest

import nbtext
from e2ecommon import BROWSER_OUTPUTS, NBVAL_OUTPUTS, ROOT, lesson_notebooks, needs_e2e, record_name, rel

pytestmark = needs_e2e


def _load(folder: Path, notebook: str, how: str) -> dict:
    path = folder / record_name(notebook)
    if not path.exists():
        pytest.fail(f"no recorded {how} run of {notebook} at {path.relative_to(ROOT)}: "
                    f"{'run `make test` first' if how == 'nbval' else 'the browser test did not reach it'}")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("source", lesson_notebooks(), ids=rel)
def test_two_executions_print_the_same(source: Path):
    notebook = rel(source)
    first, second = _load(NBVAL_OUTPUTS, notebook, "nbval"), _load(BROWSER_OUTPUTS, notebook, "browser")
    if first["notebook_sha256"] != hashlib.sha256(source.read_bytes()).hexdigest():
        pytest.fail(f"{notebook} changed since `make test` recorded its outputs: run `make test` again")
    if first["failed"]:
        pytest.fail(f"{notebook} failed under nbval: fix that first (see the `make test` output)")
    a, b = first["cells"], second["cells"]
    assert [c["source"] for c in a] == [c["source"] for c in b], f"{notebook}: the two runs saw different code cells"

    diffs, compared, skipped = [], 0, 0
    for i, (x, y) in enumerate(zip(a, b)):
        if nbtext.draws_widget(x["source"]):
            skipped += 1
            continue
        compared += 1
        tx, ty = nbtext.cell_text(x["source"], x["outputs"]), nbtext.cell_text(y["source"], y["outputs"])
        verdicts = sorted(set(nbtext.timing_verdicts(tx)) | set(nbtext.timing_verdicts(ty)))
        if verdicts:
            diffs.append(f"code cell {i}: a line judges a wall-clock measurement in words (print the number with its "
                         f"unit; a verdict on speed belongs in `python -m course_lib.bench`):\n  "
                         + "\n  ".join(verdicts))
        if tx != ty:
            for change in nbtext.timing_word_changes(tx, ty):
                diffs.append(f"code cell {i}: {change.replace('first: ', 'nbval:  ').replace('second:', 'browser:')}")
            diff = "\n".join(difflib.unified_diff(tx.splitlines(), ty.splitlines(), "nbval run", "browser run",
                                                  lineterm="", n=1))
            diffs.append(f"code cell {i}:\n{diff}")
        nx, ny = nbtext.image_count(x["source"], x["outputs"]), nbtext.image_count(y["source"], y["outputs"])
        if nx != ny:
            diffs.append(f"code cell {i}: {nx} figures under nbval, {ny} in the browser")
    assert not diffs, (f"{notebook}: outputs differ between two executions (seeded? printing times without a "
                       f"unit?):\n" + "\n\n".join(diffs))
    print(f"{notebook}: {compared} cells identical, {skipped} widget cells not compared")
