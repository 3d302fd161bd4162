"""Every lesson notebook in JupyterLab in a real browser (Debian's Chromium driven by Playwright).

The solution notebooks run under nbval in `make test` only (a few seconds each, no widgets). For each notebook: open it, Run → Run All Cells from the menu, wait until the kernel is idle with no cell queued, then
assert: every code cell ran, no error output, every figure arrived as a decoded image, no widget shown as text (the
failure learners see when the widget front end is missing), and in notebooks that use course_lib.kit.widgets.interactive
a live widget in the page: moving its first slider with the keyboard must redraw the figure.

Server and kernel are the course's own environment (.venv, ipywidgets 8): what `make lab` gives a learner. Each
notebook's text outputs are recorded for tests/e2e/test_determinism.py, which compares them with nbval's run.
Screenshots go to artifacts/e2e/screenshots/ (git-ignored).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

import nbtext
from e2ecommon import ARTIFACTS, BROWSER_OUTPUTS, lesson_notebooks, needs_e2e, record_name, rel

pytestmark = needs_e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NB_TIMEOUT_S = float(os.environ.get("COURSE_E2E_NB_TIMEOUT", 300))   # per notebook; they are designed for < 120 s
SHOTS = ARTIFACTS / "screenshots"
WIDGET_AS_TEXT = ("VBox(children=", "HBox(children=", "interactive(children=", "IntSlider(value=",
                  "FloatSlider(value=", "Dropdown(", "Error displaying widget", "Loading widget...")

# Reads the open notebook's state through the application object (exposed by --LabApp.expose_app_in_browser).
JS_STATE = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!w || !w.sessionContext || !w.context || !w.context.isReady) return {ready: false};
  const k = w.sessionContext.session && w.sessionContext.session.kernel;
  const prompts = Array.from(w.node.querySelectorAll('.jp-InputPrompt')).map(p => p.textContent || '');
  return {ready: true, kernel: k ? k.status : null, kernelName: k ? k.name : null,
          queued: prompts.filter(t => t.includes('*')).length};
}"""
JS_MODEL = "() => window.jupyterapp.shell.currentWidget.context.model.toJSON()"
JS_IMAGES = """() => Array.from(window.jupyterapp.shell.currentWidget.node.querySelectorAll('.jp-OutputArea-output img'))
  .map(i => ({complete: i.complete, width: i.naturalWidth, inWidget: !!i.closest('.jupyter-widgets')}))"""
JS_OUTPUT_TEXT = """() => Array.from(window.jupyterapp.shell.currentWidget.node.querySelectorAll('.jp-OutputArea-output'))
  .filter(o => !o.closest('.jupyter-widgets')).map(o => o.innerText)"""


def wait_for(what: str, predicate, timeout: float, interval: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def lab():
    from labserver import LabServer

    workdir = Path(tempfile.mkdtemp(prefix="course-e2e-lab-"))
    server = LabServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(server.log_path, ARTIFACTS / "jupyterlab.log")
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def browser_context(lab):
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: `apt-get install chromium` (make check-e2e does it)"
    profile = tempfile.mkdtemp(prefix="course-e2e-chromium-")
    with sync_playwright() as pw:                       # leaving the block stops Chromium and Playwright's driver
        context = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                        args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(60_000)
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def run_all_cells(page, timeout: float) -> dict:
    wait_for("the notebook to open with an idle kernel",
             lambda: (s := page.evaluate(JS_STATE))["ready"] and s["kernel"] == "idle", timeout=180)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    start = time.time()
    wait_for("the first cell to start", lambda: page.evaluate(JS_STATE)["queued"] > 0 or time.time() - start > 5, 10)
    settled = []

    def done() -> bool:   # idle with nothing queued, three polls in a row
        s = page.evaluate(JS_STATE)
        if s["kernel"] in ("dead", "unknown", None):
            raise AssertionError(f"the kernel is {s['kernel']} (crashed or ran out of memory?)")
        settled.append(s["kernel"] == "idle" and s["queued"] == 0)
        return settled[-3:] == [True] * 3

    wait_for(f"all cells to finish (limit {timeout:.0f} s)", done, timeout, interval=1.0)
    return page.evaluate(JS_MODEL)


def record_outputs(notebook: str, model: dict) -> None:
    cells = [{"source": "".join(c["source"]) if isinstance(c["source"], list) else c["source"],
              "outputs": c.get("outputs", [])} for c in model["cells"] if c["cell_type"] == "code"]
    BROWSER_OUTPUTS.mkdir(parents=True, exist_ok=True)
    data = {"notebook": notebook, "cells": [
        {"source": c["source"], "outputs": [_strip_images(o) for o in c["outputs"]]} for c in cells]}
    (BROWSER_OUTPUTS / record_name(notebook)).write_text(json.dumps(data, indent=1, ensure_ascii=False))


def _strip_images(output: dict) -> dict:
    out = {k: v for k, v in output.items() if k != "metadata"}
    if "data" in out:
        out["data"] = {m: (f"<{m}>" if m.startswith("image/") else v) for m, v in out["data"].items()}
    return out


def move_first_slider(page, shot: Path) -> None:
    """Press → (← when it stands at its maximum) on the first slider of the first course widget: one step; its figure
    must be redrawn."""
    box = page.locator(".widget-vbox:has(.widget-slider)").first
    box.scroll_into_view_if_needed()
    wait_for("the widget's first figure", lambda: box.locator("img").count() > 0, 60)
    before = box.locator("img").first.get_attribute("src")
    box.screenshot(path=str(shot.with_name(shot.stem + "_widget_before.png")))
    handle = box.locator(".widget-slider .noUi-handle").first
    handle.focus()
    now, top = handle.get_attribute("aria-valuenow"), handle.get_attribute("aria-valuemax")   # noUiSlider's ARIA
    at_max = now is not None and now == top
    page.keyboard.press("ArrowLeft" if at_max else "ArrowRight")

    def redrawn():
        imgs = box.locator("img")
        return imgs.count() > 0 and imgs.first.get_attribute("src") != before

    wait_for("the figure to change after moving the slider (is the kernel connected to the widget?)", redrawn, 60)
    wait_for("the kernel to finish redrawing", lambda: page.evaluate(JS_STATE)["kernel"] == "idle", 60)
    box.screenshot(path=str(shot.with_name(shot.stem + "_widget_after.png")))


@pytest.mark.parametrize("source", lesson_notebooks(), ids=rel)
def test_notebook_in_jupyterlab(lab, browser_context, source: Path):
    notebook, name = rel(source), source.name
    served = lab.add_notebook(source, ("solutions/" if "solutions" in source.parts else "") + name)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / f"{Path(name).stem}.png"
    page = browser_context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    try:
        page.goto(lab.lab_url(served, workspace=Path(name).stem), wait_until="domcontentloaded", timeout=120_000)
        t0 = time.time()
        model = run_all_cells(page, NB_TIMEOUT_S)
        seconds = time.time() - t0
        page.screenshot(path=str(shot))
        record_outputs(notebook, model)

        code = [c for c in model["cells"] if c["cell_type"] == "code"]
        unrun = [i for i, c in enumerate(code) if c.get("execution_count") is None and "".join(c["source"]).strip()]
        errors = [f"code cell {i}: {e}" for i, c in enumerate(code) for e in nbtext.errors(c.get("outputs", []))]
        assert not errors, f"{notebook}: error output in the browser:\n" + "\n".join(errors)
        assert not unrun, f"{notebook}: code cells {unrun} never ran"

        # Figures: every image output (and every figure inside a widget) decoded to a picture with a width.
        wait_for("the images to decode", lambda: all(i["complete"] for i in page.evaluate(JS_IMAGES)), 30)
        images = page.evaluate(JS_IMAGES)
        expected = sum(nbtext.image_count("".join(c["source"]), c.get("outputs", [])) for c in code)
        top_level = [i for i in images if not i["inWidget"]]
        assert len(top_level) >= expected, f"{notebook}: {expected} figure outputs but {len(top_level)} images shown"
        assert all(i["width"] > 0 for i in images), f"{notebook}: an image did not render (width 0)"
        shown_as_text = [t[:80] for t in page.evaluate(JS_OUTPUT_TEXT) if any(m in t for m in WIDGET_AS_TEXT)]
        assert not shown_as_text, f"{notebook}: a widget shows as text or failed to load: {shown_as_text}"

        if "interactive(" in source.read_text(encoding="utf-8"):
            live = page.locator(".jupyter-widgets.widget-slider, .jupyter-widgets.widget-dropdown").count()
            assert live > 0, f"{notebook}: uses interactive() but no live widget control is in the page"
            if page.locator(".widget-vbox:has(.widget-slider)").count():
                move_first_slider(page, shot)
        assert not page_errors, f"{notebook}: JavaScript errors in the page: {page_errors[:3]}"
        print(f"{notebook}: {len(code)} code cells, {len(images)} images, {seconds:.1f} s in the browser")
    finally:
        page.close()
        lab.shutdown_kernels()
