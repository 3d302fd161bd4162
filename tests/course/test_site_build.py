"""The course website's build (tools/site): its pages show what JupyterLab shows, and a failed notebook is never
published. Fast checks without a browser; tests/e2e/test_site.py checks the built site in Chromium.

A tiny notebook is executed the way `make test` executes the course (nbval with the tools.site.nbsave plugin) and its
saved copy is compared with what a Jupyter kernel shows: a trailing `;` silences a cell's result (nbval alone loses
that: it runs cells with store_history=False), so a figure appears once and no object repr is printed.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tools.site import build, nbsave  # noqa: E402

REPR = re.compile(r"<Figure size \d|<matplotlib\.|CheckResult\(|<IPython\.core\.display\.|object at 0x[0-9a-f]+>")

# The tiny notebook: (source, images JupyterLab shows, whether JupyterLab shows a result).
CELLS = [
    ("import matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\n"
     "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(2, 1.5))\nax.plot([0, 1], [1, 0]);", 1, False),
    ("def make(c):\n    fig, ax = plt.subplots(figsize=(2, 1.5))\n    ax.bar([0, 1], [1, c])\n    return fig\n\n"
     "make(2);", 1, False),
    ("make(3)   # no ';': the result and the inline backend's figure, twice in JupyterLab as well", 2, True),
    ("print('kept');  # a comment after the ';'", 0, False),
    ("[{'term': i} for i in range(3)];", 0, False),
    ("21 * 2", 0, True),
]


def output(kind: str, **data) -> dict:
    if kind == "stream":
        return {"output_type": "stream", "name": "stdout", "text": "x\n"}
    return {"output_type": kind, "data": data, "metadata": {}, **({"execution_count": 1} if kind == "execute_result"
                                                                  else {})}


# ----------------------------------------------------------------------------------------------------- pure functions
@pytest.mark.parametrize("source, silenced", [
    ("f();", True), ("f()", False), ("x = f();  # note", True), ("f(\n    1);\n", True), ("a; b", False),
    ("s = 'a;'", False),
])
def test_silenced_follows_ipython(source, silenced):
    assert nbsave.silenced(source) is silenced


def test_jupyter_outputs_drops_only_the_silenced_result():
    fig = output("display_data", **{"image/png": "iVBOR", "text/plain": "<Figure size 200x150 with 1 Axes>"})
    res = output("execute_result", **{"text/plain": "[<matplotlib.lines.Line2D at 0x7f>]"})
    widget = output("display_data", **{"application/vnd.jupyter.widget-view+json": {"model_id": "x"},
                                       "text/plain": "IntSlider(value=1)"})
    kept = nbsave.jupyter_outputs("ax.plot(x);", [output("stream"), fig, res, widget])
    assert [o["output_type"] for o in kept] == ["stream", "display_data"]
    kept = nbsave.jupyter_outputs("ax.plot(x)", [fig, res])
    assert [o["output_type"] for o in kept] == ["display_data", "execute_result"]


def test_not_executed_page_says_so_and_shows_no_output():
    nb = {"cells": [{"cell_type": "markdown", "source": ["# 99 · Title"], "metadata": {}},
                    {"cell_type": "code", "source": "1/0", "metadata": {}, "execution_count": 1,
                     "outputs": [{"output_type": "error", "ename": "ZeroDivisionError", "evalue": "", "traceback": []}]}],
          "metadata": {}}
    assert build.first_error(nb) == "code cell 1 failed with ZeroDivisionError"
    page = build.not_executed_page(nb, "when the site was built, code cell 1 failed with ZeroDivisionError")
    assert page["cells"][0]["source"] == ["# 99 · Title"]
    assert "was not executed" in "".join(page["cells"][1]["source"])
    assert page["cells"][2]["outputs"] == [] and page["cells"][2]["execution_count"] is None


def test_a_check_result_shows_nothing_in_jupyter():
    """A cell ending in `checks.name(answer)` without ';' shows the check's printed message, no CheckResult(...)."""
    from IPython.core.formatters import DisplayFormatter

    from course_lib.checks.core import CheckResult

    result = CheckResult("demo", False, "not yet")
    assert DisplayFormatter().format(result) == ({}, {})
    assert not result and "demo" in repr(result)      # still a bool and a readable repr outside Jupyter


def test_the_glossary_table_is_not_followed_by_its_rows_in_jupyter():
    """00 shows the whole glossary: without ';' its ~320 rows were printed again as a list under the table."""
    from IPython.core.formatters import DisplayFormatter

    from course_lib.kit import glossary

    rows = glossary.show(notebook=2)
    assert DisplayFormatter().format(rows) == ({}, {})
    assert rows == glossary.lookup(notebook=2) and len(rows) > 1


def headings(text: str) -> list[str]:
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            lines.append(line)
    return lines


def test_no_page_title_or_section_on_the_site_names_an_issue():
    """The site's navigation (its sidebar: page titles; each page's contents: its sections) speaks to learners."""
    sources = [ROOT / "README.md"] + [ROOT / p for p in build.PAGES] + sorted((ROOT / "docs").glob("*.md"))
    found = [f"{p.relative_to(ROOT)}: {h}" for p in sources if p.exists()
             for h in headings(p.read_text(encoding="utf-8")) if re.search(r"\bissues?\b", h, re.I)]
    for nb_path in build.course_notebooks():
        for cell in json.loads(nb_path.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] == "markdown":
                found += [f"{nb_path.relative_to(ROOT)}: {h}" for h in headings("".join(cell["source"]))
                          if re.search(r"\bissues?\b", h, re.I)]
    assert not found, f"headings that name an issue appear in the site's navigation: {found}"


# ----------------------------------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny notebook under build/ (the site build publishes notebooks of the repository), executed by nbval with
    the nbsave plugin as `make test` runs it; its own report, outputs and executed folder."""
    (ROOT / "build").mkdir(exist_ok=True)
    where = Path(tempfile.mkdtemp(prefix="test_site_build_", dir=ROOT / "build"))
    source = where / "notebooks" / "99_tiny.ipynb"
    source.parent.mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 99 · Tiny\n\nA figure, once.")] + [
        nbformat.v4.new_code_cell(src) for src, _, _ in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(source))
    tmp = tmp_path_factory.mktemp("tiny")
    env = {k: v for k, v in os.environ.items() if k not in ("COURSE_NB_REPORT", "MPLBACKEND")}
    env.update(COURSE_EXECUTED=str(tmp / "executed"), COURSE_NB_OUTPUTS=str(tmp / "outputs"),
               COURSE_NB_REPORT=str(tmp / "report.json"))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tools.site.nbsave", "--nbval-lax",
                          "--nbval-cell-timeout=120", str(source)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    yield {"source": source, "tmp": tmp, "run": run,
           "copy": tmp / "executed" / source.relative_to(ROOT), "report": tmp / "report.json"}
    shutil.rmtree(where, ignore_errors=True)


def images(cell: dict) -> list[str]:
    return [d[m] for o in cell["outputs"] for d in [o.get("data", {})] for m in d if m.startswith("image/")]


def texts(cell: dict) -> str:
    """The text a page shows: streams, and text/plain where the output has nothing richer (a figure's text/plain,
    "<Figure size ...>", is only its fallback)."""
    return "".join("".join(o.get("text", "")) + ("".join(o.get("data", {}).get("text/plain", ""))
                                                 if set(o.get("data", {})) <= {"text/plain"} else "")
                   for o in cell["outputs"])


def test_the_executed_copy_shows_what_jupyterlab_shows(tiny):
    assert tiny["run"].returncode == 0, tiny["run"].stdout[-2000:]
    copy = json.loads(tiny["copy"].read_text(encoding="utf-8"))
    cells = [c for c in copy["cells"] if c["cell_type"] == "code"]
    assert copy["metadata"]["course_executed"]["failed"] is False
    for (src, n_images, result), cell in zip(CELLS, cells):
        assert len(images(cell)) == n_images, f"{src!r}: {len(images(cell))} figures, JupyterLab shows {n_images}"
        assert any(o["output_type"] == "execute_result" for o in cell["outputs"]) is result, src
    assert not [t for c in cells[:2] if REPR.search(t := texts(c))], "an object's repr after a trailing ';'"
    assert "term" not in texts(cells[4]), "a list silenced by ';' is printed"
    assert "kept" in texts(cells[3]) and "42" in texts(cells[5])


def test_the_staged_page_shows_each_figure_once(tiny, tmp_path):
    """What the site build hands to Sphinx, from the copy, and (with the `site` extra) the rendered page."""
    build.stage(tiny["tmp"] / "executed", may_execute=False,
                report=tiny["report"], notebooks=[tiny["source"]], where_to=tmp_path / "stage", reference_pages=False)
    staged = json.loads((tmp_path / "stage" / tiny["source"].relative_to(ROOT)).read_text(encoding="utf-8"))
    cells = [c for c in staged["cells"] if c["cell_type"] == "code"]
    assert [len(images(c)) for c in cells] == [n for _, n, _ in CELLS]
    pytest.importorskip("myst_nb", reason="the `site` extra renders the page: pip install -e '.[site]'")
    out = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-c", str(ROOT / "docs"),
                          str(tmp_path / "stage"), str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    page = (out / tiny["source"].relative_to(ROOT).with_suffix(".html")).read_text(encoding="utf-8")
    blocks = re.split(r'<div class="cell docutils container">', page)[1:]
    assert len(blocks) == len(CELLS), f"{len(blocks)} code cells on the page, {len(CELLS)} in the notebook"
    assert [len(re.findall(r"<img ", b)) for b in blocks] == [n for _, n, _ in CELLS]
    assert not REPR.search(html.unescape(page)), "an object's repr is printed on the page"


def test_a_notebook_that_failed_is_never_published(tiny, tmp_path):
    rel = tiny["source"].relative_to(ROOT).as_posix()
    executed = tiny["tmp"] / "executed"
    report = tmp_path / "report.json"
    report.write_text(json.dumps({rel: {"seconds": 1.0, "peak_mb": None, "cells": 6, "failed": True}}))
    for may_execute in (False, True):
        with pytest.raises(SystemExit) as stop:
            build.stage(executed, may_execute=may_execute, report=report, notebooks=[tiny["source"]],
                        where_to=tmp_path / "stage", reference_pages=False)
        message = str(stop.value.code)
        assert rel in message and "never published" in message and "\n" not in message
    # the executed copy says so as well (the report may be missing, e.g. after `make test` without COURSE_NB_REPORT)
    copies = tmp_path / "executed"
    nb = json.loads(tiny["copy"].read_text(encoding="utf-8"))
    nb["metadata"]["course_executed"]["failed"] = True
    (copies / rel).parent.mkdir(parents=True)
    (copies / rel).write_text(json.dumps(nb))
    with pytest.raises(SystemExit, match=re.escape(rel)):
        build.stage(copies, may_execute=False, report=tmp_path / "none.json", notebooks=[tiny["source"]],
                    where_to=tmp_path / "stage", reference_pages=False)


def test_a_notebook_that_fails_when_the_build_runs_it_shows_no_output(tmp_path):
    """A site built without a test run executes the notebook itself; when it fails, its page says it was not
    executed and shows no output (and no copy is kept for the next build)."""
    where = Path(tempfile.mkdtemp(prefix="test_site_build_", dir=ROOT / "build"))
    try:
        source = where / "notebooks" / "98_fails.ipynb"
        source.parent.mkdir(parents=True)
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell("# 98 · Fails"), nbformat.v4.new_code_cell("print('before')"),
                    nbformat.v4.new_code_cell("1 / 0")]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, str(source))
        build.stage(tmp_path / "executed", may_execute=True, report=tmp_path / "none.json", notebooks=[source],
                    where_to=tmp_path / "stage", reference_pages=False)
        page = json.loads((tmp_path / "stage" / source.relative_to(ROOT)).read_text(encoding="utf-8"))
        assert "was not executed" in "".join(page["cells"][1]["source"])
        assert "ZeroDivisionError" in "".join(page["cells"][1]["source"])
        assert all(c["outputs"] == [] for c in page["cells"] if c["cell_type"] == "code")
        assert not list((tmp_path / "executed").rglob("*.ipynb")), "a failed execution was kept for the next build"
    finally:
        shutil.rmtree(where, ignore_errors=True)
