"""The widget cells of every notebook under ipywidgets 7.7.1, the version Google Colab ships.

Runs in the Colab-like environment that `make check-e2e` prepares (tests/e2e/test_widget_helpers.py and
tests/kit/test_widgets.py run there too: every control type of course_lib.kit.widgets becomes its ipywidget, hands the plot
function a value of the right type and redraws). Notebooks reach widgets only through course_lib.kit.widgets (checked
below), so what differs between ipywidgets 7 and 8 lives in that helper. On top of the helper tests, the notebooks
whose widgets come within their first EARLY_CELLS code cells run live here: nbclient executes their code cells up to
the last widget cell on a kernel of that environment, as on Colab, then a probe cell moves the first control of every
course widget and checks that the figure is drawn again. (Running every widget notebook up to its widget took 274 s
of CI; the later widgets run live under ipywidgets 8 in the browser test.) ipywidgets 8 is covered by the same helper
tests in `make test` and by the browser test.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import nbtext
from e2ecommon import ROOT, all_notebooks, needs_e2e, notebook_client, rel

pytestmark = needs_e2e
CELL_TIMEOUT_S = float(os.environ.get("COURSE_E2E_CELL_TIMEOUT", 600))   # generous: a shared CI core is slow

PROBE = '''
import ipywidgets as _w
import course_lib.kit.widgets as _cw
_drawn, _render = [], _cw.render
def _spy(plot_fn, params):
    fig = _render(plot_fn, params)
    _drawn.append((dict(params), fig))
    return fig
_cw.render = _spy
_boxes = [b for b in list(_w.Widget.widgets.values())
          if isinstance(b, _w.VBox) and b.children and isinstance(b.children[-1], _w.Output)]
assert _boxes, "no live course widget in the kernel"
for _box in _boxes:
    _c = _box.children[-2].children[0]
    if isinstance(_c, (_w.IntSlider, _w.FloatSlider)):
        _c.value = _c.value + _c.step if _c.value + _c.step <= _c.max else _c.value - _c.step
    elif isinstance(_c, _w.Dropdown):
        _c.value = [o for o in _c.options if o != _c.value][0]
    elif isinstance(_c, _w.Checkbox):
        _c.value = not _c.value
    else:
        _c.value = _c.value + "x"
    assert _drawn and _drawn[-1][1] is not None, f"moving {_c.description!r} to {_c.value!r} drew no figure"
    print(f"moved {_c.description}: figure redrawn")
_cw.render = _render
print(f"ipywidgets {_w.__version__}: {len(_boxes)} widget(s) redrawn")
'''


EARLY_CELLS = 6


def _widget_notebooks() -> list[Path]:
    return [p for p in all_notebooks() if "interactive(" in p.read_text(encoding="utf-8")]


def _code_cells(source: Path) -> list[str]:
    import nbformat
    return [c.source for c in nbformat.read(source, as_version=4).cells if c.cell_type == "code"]


def _early_widget_notebooks() -> list[Path]:
    return [p for p in _widget_notebooks()
            if max(i for i, c in enumerate(_code_cells(p)) if "interactive(" in c) < EARLY_CELLS]


def test_notebooks_reach_widgets_only_through_the_course_helper():
    import re
    from course_lib.kit import widgets
    controls = {"Slider", "IntSlider", "Choice", "Toggle", "Text"}
    assert controls <= set(dir(widgets)), "the helper's control types changed: update this test and test_widget_helpers"
    for p in all_notebooks():
        for i, c in enumerate(_code_cells(p)):
            assert not re.search(r"^\s*(import ipywidgets|from ipywidgets)", c, re.M), \
                f"{rel(p)} code cell {i} imports ipywidgets itself: use course_lib.kit.widgets (tested under 7 and 8)"


def test_this_is_colabs_ipywidgets():
    import ipywidgets
    assert ipywidgets.__version__ == "7.7.1", f"run in the Colab-like environment (make check-e2e), not {ipywidgets.__version__}"


@pytest.mark.parametrize("source", _early_widget_notebooks(), ids=rel)
def test_widget_cells_run_live_under_ipywidgets7(source: Path):
    import nbformat

    nb = nbformat.read(source, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    last = max(i for i, c in enumerate(code) if "interactive(" in c.source)
    nb.cells = code[:last + 1] + [nbformat.v4.new_code_cell(PROBE)]
    env = {k: v for k, v in os.environ.items() if k not in ("COURSE_WIDGETS", "COURSE_NETBLOCK", "PYTHONPATH")}
    env["PYTHONHASHSEED"] = "0"
    client = notebook_client(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(source.parent)}})
    client.execute(env=env)

    errors = [f"code cell {i}: {e}" for i, c in enumerate(nb.cells) for e in nbtext.errors(c.outputs)]
    assert not errors, f"{rel(source)} under ipywidgets 7.7.1:\n" + "\n".join(errors)
    for i, c in enumerate(nb.cells[:-1]):
        if "interactive(" in c.source:
            text = "".join(o.get("text", "") for o in c.outputs)
            assert "Static preview" not in text, f"code cell {i} drew static previews: widgets were not live"
            assert any(nbtext.WIDGET_MIME in o.get("data", {}) for o in c.outputs), f"code cell {i} shows no widget"
    probe_out = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    assert "ipywidgets 7.7.1" in probe_out, probe_out
    print(f"{rel(source)}: {probe_out.strip().splitlines()[-1]}")


def test_the_live_notebooks_use_every_control_type_but_text():
    """The early notebooks run live must between them use each control except Text (test_widget_helpers covers it)."""
    import re
    used = {m for p in _early_widget_notebooks() for c in _code_cells(p)
            for m in re.findall(r"\b(Slider|IntSlider|Choice|Toggle)\(", c)}
    assert used == {"Slider", "IntSlider", "Choice", "Toggle"}, f"only {sorted(used)} run live under ipywidgets 7.7.1"
