"""pytest plugin: keep the notebooks nbval executes, with their outputs (figures included), for the website.

`make test` loads it (`-p tools.site.nbsave`). After the run every notebook nbval executed is written to
artifacts/executed/<its path> (COURSE_EXECUTED names another folder) with the outputs of that run, so `make site`
can build the website without executing the notebooks a second time. Each copy records the SHA-256 of the source
notebook it came from (metadata.course_executed), so the site build can tell a stale copy from a current one.
Outputs that need a live kernel (widget views, e.g. tqdm's bar in a notebook) are left out.

The copy holds what JupyterLab shows. One difference has to be undone here: nbval executes cells with
store_history=False, and IPython decides whether a trailing `;` silences a cell's result by reading the cell from
its history (DisplayHook.quiet), so under nbval `plot();` or `checks.x(answer);` still sends its result, e.g. a
figure that the inline backend shows a second time, `CheckResult(...)` or a matplotlib object's repr
(computationalmodelling/nbval#194, ipython/ipython#14162). `jupyter_outputs` drops that result with IPython's own
test of the cell, as a Jupyter kernel does. Each copy also records whether a cell of the run failed
(metadata.course_executed.failed): tools/site/build.py never publishes such a notebook.
"""
from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

_RUNS: dict[str, dict] = {}        # notebook path -> {"nb": the notebook read by nbval, "outputs": {cell: [...]}}


def executed_dir() -> Path:
    return Path(os.environ.get("COURSE_EXECUTED", ROOT / "artifacts" / "executed"))


def _static(output: dict) -> dict | None:
    """An output as a static page can show it; None drops it (a widget view with no text worth showing)."""
    out = copy.deepcopy(dict(output))
    if out.get("output_type") in ("display_data", "execute_result"):
        data = dict(out.get("data", {}))
        if WIDGET_VIEW in data:
            # A live widget: a progress bar (its text is the bar when it was created, 0%) or a control whose static
            # figures the notebook draws as well (COURSE_WIDGETS=static). Neither means anything on a static page.
            return None
        out["data"] = data
        out.setdefault("metadata", {})
    return out


def silenced(source: str) -> bool:
    """True when Jupyter shows no result for this cell: its last statement ends with `;` (IPython's own test, on
    the cell as IPython transforms it, so that a line magic such as `%time f();` counts as IPython counts it)."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        return DisplayHook.semicolon_at_end_of_expression(TransformerManager().transform_cell(source))
    except Exception:   # a cell IPython cannot tokenize raised an error when it ran; its outputs say so
        return False


def jupyter_outputs(source: str, outputs: list) -> list[dict]:
    """A cell's outputs as JupyterLab shows them on a static page: no live widgets, no result after a trailing `;`."""
    quiet = silenced(source)
    kept = []
    for o in outputs:
        if quiet and o.get("output_type") == "execute_result":
            continue
        o = _static(o)
        if o is not None:
            kept.append(o)
    return kept


def pytest_runtest_makereport(item, call):
    if call.when != "call" or not hasattr(item, "cell_num") or not str(item.fspath).endswith(".ipynb"):
        return
    nb_path = str(item.fspath)
    run = _RUNS.setdefault(nb_path, {"nb": getattr(item.parent, "nb", None), "outputs": {}, "failed": False})
    outs = getattr(item, "test_outputs", None) or []
    run["outputs"][item.cell_num] = jupyter_outputs(item.cell.source, outs)
    run["failed"] |= call.excinfo is not None


def save(nb_path: str, run: dict) -> Path | None:
    source = Path(nb_path)
    if run["nb"] is None or not source.exists():
        return None
    nb = copy.deepcopy(run["nb"])
    count = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        i = count
        count += 1
        if i in run["outputs"]:
            cell.execution_count = count
            cell.outputs = [nbformat.from_dict(o) for o in run["outputs"][i]]
            for o in cell.outputs:
                if o.get("output_type") == "execute_result":
                    o["execution_count"] = count
    nb.metadata["course_executed"] = {"source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
                                      "failed": run["failed"], "by": "nbval (make test)"}
    try:
        rel = source.resolve().relative_to(ROOT)
    except ValueError:
        rel = Path(source.name)
    target = executed_dir() / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(target))
    return target


def pytest_sessionfinish(session, exitstatus):
    for nb_path, run in _RUNS.items():
        save(nb_path, run)
