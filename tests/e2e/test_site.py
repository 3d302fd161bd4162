"""The course website (`make site`, in build/site) in a real browser (Debian's Chromium driven by Playwright).

The site is served from 127.0.0.1 and every request to another host is blocked and recorded, so the checks prove
that the pages work offline. For every page: it loads with no console error and no JavaScript error, requests
nothing from the internet, every image decodes, and every formula is rendered by the bundled MathJax with no
math-error node. Every internal link of every page resolves (file and #anchor). The search page finds a glossary
term on the glossary page. Every notebook has its page with its Colab badge, and the course notebooks' pages show
their Chinese section.

Each notebook's page shows what JupyterLab shows for the run it was built from (the executed copy in
artifacts/executed/, COURSE_EXECUTED names another folder): in every code cell as many figures as JupyterLab shows
(no result after a trailing `;`, as IPython decides), no figure twice, no repr of a Python object
(`<Figure size ...>`, `<matplotlib...>`, `CheckResult(...)`), no traceback, and no code or printed line cut off at
the column's edge. No page's navigation (sidebar, table of contents, title) names an issue. The cheat sheet prints to PDF with one page per notebook. Screenshots and the PDF go to
artifacts/site/.

Run by `make check-site` (and by `make check-e2e` when a site has been built); .ci/run builds the site first.
"""
from __future__ import annotations

import csv
import functools
import html.parser
import http.server
import json
import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from e2ecommon import ROOT, e2e_enabled, needs_e2e

pytestmark = needs_e2e

SITE = Path(os.environ.get("COURSE_SITE", ROOT / "build" / "site"))
OUT = ROOT / "artifacts" / "site"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
WIDGET_AS_TEXT = ("VBox(children=", "HBox(children=", "interactive(children=", "IntSlider(value=",
                  "FloatSlider(value=", "Dropdown(")
SKIP_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static"}
EXECUTED = Path(os.environ.get("COURSE_EXECUTED", ROOT / "artifacts" / "executed"))
# A Python object's repr where JupyterLab shows nothing or a figure: a result that a trailing ';' silences in Jupyter.
REPR = re.compile(r"<Figure size \d|<matplotlib\.|CheckResult\(|<IPython\.core\.display\.|object at 0x[0-9a-f]+>")
ISSUE = re.compile(r"\bissues?\b", re.I)
# myst-nb's choice among an output's formats on an HTML page (nb_mime_priority_overrides are not set in docs/conf.py)
MIME_ORDER = ["application/vnd.jupyter.widget-view+json", "application/javascript", "text/html", "image/svg+xml",
              "image/png", "image/jpeg", "text/markdown", "text/latex", "text/plain"]

SITE_BUILT = (SITE / "index.html").exists()
if not SITE_BUILT and os.environ.get("COURSE_SITE_REQUIRED") != "1":
    pytestmark = [needs_e2e, pytest.mark.skip(reason="no website built: run `make site`")]


def pages() -> list[Path]:
    return sorted(p for p in SITE.rglob("*.html") if not SKIP_DIRS & set(p.relative_to(SITE).parts))


def page_ids(paths):
    return [p.relative_to(SITE).as_posix() for p in paths]


PAGES = pages() if SITE.exists() and e2e_enabled() else []     # outside make check-e2e: one skip, not one per page


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name"):
            if a.get(key):
                self.ids.add(a[key])
        if tag == "a" and a.get("href"):
            self.refs.append(a["href"])
        if tag in ("img", "script") and a.get("src"):
            self.refs.append(a["src"])
        if tag == "link" and a.get("href"):
            self.refs.append(a["href"])


@functools.lru_cache(maxsize=None)
def parsed(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(encoding="utf-8", errors="replace"))
    return p


def test_site_has_a_page_per_notebook_and_the_reference_pages():
    assert SITE_BUILT, f"no website in {SITE}: run `make site` first"
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) + sorted(
        (ROOT / "notebooks" / "solutions").glob("*.ipynb"))
    missing = [nb.relative_to(ROOT).as_posix() for nb in notebooks
               if not (SITE / nb.relative_to(ROOT).with_suffix(".html")).exists()]
    assert not missing, f"notebooks without a page on the site: {missing}"
    for page in ("index.html", "glossary.html", "search.html", "docs/teaching.html", "docs/cheatsheet.html",
                 "README.zh-CN.html"):
        assert (SITE / page).exists(), f"the site lacks {page}"
    for nb in notebooks:
        text = (SITE / nb.relative_to(ROOT).with_suffix(".html")).read_text(encoding="utf-8")
        assert "colab.research.google.com/github/" in text, f"{nb.name}: no Colab badge on its page"
        assert "data:image/png" in text or "_images/" in text or "solutions" in nb.parts, \
            f"{nb.name}: its page shows no figure (were the executed outputs used?)"
        if nb.parent.name == "notebooks":
            assert "中文导读" in text, f"{nb.name}: its page lacks the Chinese section"


def test_cheatsheet_has_a_page_for_every_notebook():
    text = (ROOT / "docs" / "cheatsheet.md").read_text(encoding="utf-8")
    numbers = sorted(p.name[:2] for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    missing = [n for n in numbers if not re.search(rf"^## {n} · ", text, re.M)]
    assert not missing, f"docs/cheatsheet.md has no '## NN · ...' page for notebooks {missing}"
    assert text.count(":::{container} cheatsheet-page") >= len(numbers)


@pytest.mark.parametrize("page", PAGES, ids=page_ids(PAGES))
def test_internal_links_resolve(page):
    broken = []
    for ref in parsed(page).refs:
        parts = urlsplit(ref)
        if parts.scheme or parts.netloc or ref.startswith(("mailto:", "javascript:")):
            continue
        target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            broken.append(ref)
            continue
        if parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in parsed(target).ids:
            broken.append(ref)
    assert not broken, f"{page.relative_to(SITE)}: links that do not resolve: {broken[:10]}"


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: `apt-get install chromium` (make check-e2e does it)"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture()
def page_of(browser, server):
    """A fresh page that blocks and records every request leaving 127.0.0.1 and collects console errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    record = {"external": [], "console": [], "errors": []}

    def route(r):
        if urlsplit(r.request.url).hostname in ("127.0.0.1", "localhost"):
            r.continue_()
        else:
            record["external"].append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and record["console"].append(m.text))
    page.on("pageerror", lambda e: record["errors"].append(str(e)))
    yield page, record
    context.close()


JS_IMAGES = """() => Array.from(document.images).map(i => ({src: i.getAttribute('src') || '', complete: i.complete,
                                                            width: i.naturalWidth}))"""
JS_MATH = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  if (window.MathJax && MathJax.typesetPromise) { await MathJax.typesetPromise(); }
  return {math: document.querySelectorAll('.math').length,
          rendered: document.querySelectorAll('mjx-container').length,
          errors: Array.from(document.querySelectorAll('mjx-merror, [data-mjx-error]'))
                       .map(e => e.getAttribute('data-mjx-error') || e.textContent).slice(0, 5),
          mathjax: !!window.MathJax};
}"""


def wait_for(predicate, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def shot_name(rel: str) -> str:
    return rel.replace("/", "__").removesuffix(".html") + ".png"


@pytest.mark.parametrize("rel", page_ids(PAGES))
def test_page_in_the_browser(page_of, server, rel):
    page, record = page_of
    page.goto(f"{server}/{rel}", wait_until="load")
    page.evaluate("() => document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager')")
    wait_for(lambda: all(i["complete"] for i in page.evaluate(JS_IMAGES)), what="the images to load")
    images = page.evaluate(JS_IMAGES)
    undecoded = [i["src"][:80] for i in images if i["width"] == 0]
    assert not undecoded, f"{rel}: images that do not decode: {undecoded}"
    math = page.evaluate(JS_MATH)
    if math["math"]:
        assert math["mathjax"], f"{rel}: {math['math']} formulas but MathJax did not load"
        assert math["rendered"] >= math["math"], f"{rel}: {math['math']} formulas, {math['rendered']} rendered"
    assert not math["errors"], f"{rel}: MathJax errors: {math['errors']}"
    outputs = page.evaluate("() => Array.from(document.querySelectorAll('.cell_output')).map(o => o.innerText)")
    as_text = [t[:80] for t in outputs if any(m in t for m in WIDGET_AS_TEXT)]
    assert not as_text, f"{rel}: a widget shows as text instead of its static figure: {as_text[:3]}"
    faults = []
    clipped = page.evaluate(JS_CLIPPED)
    if clipped:
        faults.append(f"{len(clipped)} code or text blocks are wider than the page shows (cut off at the edge): "
                      f"{clipped[:3]}")
    nav = sorted({line.strip() for line in page.evaluate(JS_NAV).splitlines() if ISSUE.search(line)})
    if nav:
        faults.append(f"the navigation names an issue: {nav[:5]}")
    if rel.startswith("notebooks/"):
        faults += check_notebook_page(page, rel)
    assert not faults, f"{rel}: " + "; ".join(faults[:20])
    if rel in ("index.html", "glossary.html", "docs/cheatsheet.html", "notebooks/02_moe_routing.html",
               "README.zh-CN.html"):
        OUT.joinpath("screenshots").mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(OUT / "screenshots" / shot_name(rel)), full_page=False)
    assert not record["external"], f"{rel}: requests to the internet (blocked): {record['external'][:5]}"
    assert not record["errors"], f"{rel}: JavaScript errors: {record['errors'][:3]}"
    assert not record["console"], f"{rel}: console errors: {record['console'][:3]}"


JS_CELLS = """() => Array.from(document.querySelectorAll('div.cell')).map(c => ({
  images: Array.from(c.querySelectorAll('.cell_output img')).map(i => i.getAttribute('src') || ''),
  text: Array.from(c.querySelectorAll('.cell_output')).map(o => o.innerText).join('\\n'),
  tracebacks: c.querySelectorAll('.cell_output .traceback, .cell_output .output.error').length}))"""
JS_CLIPPED = """() => Array.from(document.querySelectorAll('pre')).filter(p => p.scrollWidth > p.clientWidth + 1)
  .map(p => ({line: p.innerText.split('\\n').reduce((a, l) => l.length > a.length ? l : a, '').slice(0, 90),
              shown: p.clientWidth, needed: p.scrollWidth}))"""
JS_NAV = """() => [document.title].concat(Array.from(document.querySelectorAll(
  'nav, .bd-sidebar-primary, .bd-sidebar-secondary, .bd-toc, .prev-next-area')).map(n => n.innerText)).join('\\n')"""


def silenced(source: str) -> bool:
    """Jupyter shows no result for a cell whose last statement ends with ';' (IPython's own test)."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.inputtransformer2 import TransformerManager

    return DisplayHook.semicolon_at_end_of_expression(TransformerManager().transform_cell(source))


def jupyterlab_view(notebook: Path) -> list[dict] | None:
    """Per code cell of the executed copy the page was built from: how many of its outputs JupyterLab shows as a
    figure, and the first line of each result that a trailing ';' keeps JupyterLab from showing (None without a
    copy)."""
    copy = EXECUTED / notebook
    if not copy.exists():
        return None
    cells = []
    for cell in json.loads(copy.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] != "code":
            continue
        quiet = silenced("".join(cell["source"]))
        view = {"figures": 0, "hidden": []}
        for o in cell.get("outputs", []):
            if o.get("output_type") not in ("display_data", "execute_result"):
                continue
            best = next((m for m in MIME_ORDER if m in o.get("data", {})), "")
            if quiet and o["output_type"] == "execute_result":
                first = "".join(o["data"].get("text/plain", "")).strip().splitlines()[:1]
                if best == "text/plain" and first and len(first[0]) >= 8:
                    view["hidden"].append(first[0][:60])
                continue
            view["figures"] += best.startswith("image/")
        cells.append(view)
    return cells


def check_notebook_page(page, rel: str) -> list[str]:
    """What a notebook's page shows that JupyterLab does not: the faults, one line each."""
    faults = []
    cells = page.evaluate(JS_CELLS)
    notebook = Path(rel).with_suffix(".ipynb")
    for i, cell in enumerate(cells, start=1):
        twice = sorted({s for s in cell["images"] if cell["images"].count(s) > 1})
        if twice:
            faults.append(f"code cell {i} shows the same figure twice ({len(cell['images'])} images)")
        reprs = [line.strip()[:80] for line in cell["text"].splitlines() if REPR.search(line)]
        if reprs:
            faults.append(f"code cell {i} prints an object's repr: {reprs[:2]}")
        if cell["tracebacks"]:
            faults.append(f"code cell {i} shows a traceback (a failed notebook is never published)")
    expected = jupyterlab_view(notebook)
    if expected is None:
        if os.environ.get("COURSE_SITE_REQUIRED") == "1":
            faults.append(f"no executed copy {EXECUTED / notebook} to compare the page with")
    elif len(expected) != len(cells):
        faults.append(f"{len(cells)} code cells on the page, {len(expected)} in the executed notebook")
    else:
        for i, (c, view) in enumerate(zip(cells, expected), start=1):
            if len(c["images"]) != view["figures"]:
                faults.append(f"code cell {i}: {len(c['images'])} figures on the page, JupyterLab shows "
                              f"{view['figures']}")
            shown = [h for h in view["hidden"] if h in c["text"]]
            if shown:
                faults.append(f"code cell {i} shows a result that its trailing ';' hides in JupyterLab: {shown[:1]}")
    return faults


def glossary_term() -> str:
    """An English glossary term to search for: the first one-word term of at least 8 letters."""
    with (ROOT / "assets" / "glossary" / "glossary.csv").open(encoding="utf-8") as f:
        words = [r["term_en"].strip() for r in csv.DictReader(f)]
    return next(w for w in words if re.fullmatch(r"[a-z]{8,}", w))


def test_search_finds_a_glossary_term(page_of, server):
    if not SITE_BUILT:
        pytest.skip("no website (test_site_has_a_page_per_notebook_and_the_reference_pages fails for it)")
    page, record = page_of
    term = glossary_term()
    page.goto(f"{server}/search.html?q={term}", wait_until="load")
    results = page.locator("#search-results li a, ul.search li a")
    # Sphinx's search reports "Search finished, found N pages" in its status line when all results are listed.
    status = page.locator("#search-results .search-summary, #search-progress")
    wait_for(lambda: "found" in " ".join(status.all_inner_texts()).lower(), timeout=60,
             what=f"the search for {term!r} to finish")
    hrefs = [results.nth(i).get_attribute("href") or "" for i in range(results.count())]
    assert any("glossary" in h for h in hrefs), f"searching {term!r} did not find the glossary page: {hrefs[:10]}"
    assert not record["console"] and not record["errors"], record


def test_cheatsheet_prints_one_page_per_notebook(page_of, server):
    if not SITE_BUILT:
        pytest.skip("no website (test_site_has_a_page_per_notebook_and_the_reference_pages fails for it)")
    page, _ = page_of
    page.goto(f"{server}/docs/cheatsheet.html", wait_until="load")
    page.evaluate(JS_MATH)
    sections = page.locator(".cheatsheet-page").count()
    assert sections >= len(list((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))), f"{sections} cheat sheet pages"
    OUT.mkdir(parents=True, exist_ok=True)
    pdf = page.pdf(path=str(OUT / "cheatsheet.pdf"), format="A4", print_background=True)
    pages = len(re.findall(rb"/Type\s*/Page[^s]", pdf))
    assert pages >= sections, f"the printed cheat sheet has {pages} pages for {sections} notebooks"
