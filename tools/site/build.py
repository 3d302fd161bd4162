"""Build the course website (`make site`): a static HTML site of every notebook with its outputs.

    python tools/site/build.py [--out build/site] [--executed artifacts/executed] [--no-execute]

1. Notebooks: every notebooks/NN_*.ipynb and notebooks/solutions/*.ipynb. Each comes with the outputs of the test run
   when artifacts/executed/ holds a copy of the same source (tools/site/nbsave.py writes them during `make test`);
   otherwise this script executes it once with nbclient, offline and with COURSE_WIDGETS=static (widgets appear as
   their static figures), and keeps the copy there for the next build. `--no-execute` (CI) fails instead, so CI
   never executes a notebook twice. A page shows the outputs JupyterLab shows (nbsave.jupyter_outputs).
   A notebook that failed is never published: when the test run's report (--report, default $COURSE_NB_REPORT or
   artifacts/notebook_report.json) or its executed copy marks it failed, the build stops with one line naming it;
   when this script's own execution of it fails (a site built without a test run), its page shows the code without
   outputs under a note saying that it was not executed.
2. Pages: the README as the home page, README.zh-CN.md, CONTRIBUTING.md, every docs/*.md (teaching plan, cheat
   sheet, and whatever else is there), and a glossary page generated from assets/glossary/glossary.csv.
   Links between pages become links between the site's pages; links to other files of the repository point to
   the repository on GitHub; the Colab badge image is served from the site itself.
3. `sphinx-build -c docs` (docs/conf.py: sphinx-book-theme, myst-nb with execution off, MathJax shipped locally).

The pages are laid out in build/site-src (git-ignored) first; the site lands in build/site.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tools.site import nbsave  # noqa: E402  (shared: how outputs are made static)

STAGE = ROOT / "build" / "site-src"
BADGE_URL = "https://colab.research.google.com/assets/colab-badge.svg"
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")
PAGES = ["README.zh-CN.md", "CONTRIBUTING.md"]


def repository_url() -> str:
    m = re.search(r'^Repository\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    return m.group(1) if m else ""


def course_notebooks() -> list[Path]:
    main = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    return main + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------------- notebooks
def executed_copy(source: Path, executed: Path) -> dict | None:
    copy = executed / source.relative_to(ROOT)
    if not copy.exists():
        return None
    nb = json.loads(copy.read_text(encoding="utf-8"))
    meta = nb.get("metadata", {}).get("course_executed", {})
    return nb if meta.get("source_sha256") == sha256(source) else None


def report_failures(report: Path) -> set[str]:
    """Notebooks (paths relative to the repository) that the test run's report (conftest.py) marks failed."""
    if not report.exists():
        return set()
    data = json.loads(report.read_text(encoding="utf-8"))
    return {Path(name).as_posix() for name, rec in data.items() if rec.get("failed")}


def failed_copy(nb: dict) -> bool:
    return bool(nb.get("metadata", {}).get("course_executed", {}).get("failed"))


def jupyter_view(nb: dict) -> dict:
    """Every code cell's outputs as JupyterLab shows them (a copy written before nbsave did this still has them)."""
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = nbsave.jupyter_outputs("".join(cell.get("source", "")), cell.get("outputs", []))
    return nb


def first_error(nb: dict) -> str | None:
    """'code cell N failed with ErrorName' for the first code cell (numbered from 1) with an error output, else None."""
    n = 0
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        n += 1
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                return f"code cell {n} failed with {o.get('ename', 'an error')}"
    return None


def not_executed_page(nb: dict, why: str) -> dict:
    """The notebook without any output, under a note that says it was not executed (and why)."""
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    note = {"cell_type": "markdown", "id": "course-not-executed", "metadata": {},
            "source": [":::{warning}\n",
                       f"This notebook was not executed for this website ({why}): the page shows its code without "
                       "outputs. Run it in JupyterLab or on Colab to see them.\n", ":::\n"]}
    at = 1 if nb["cells"] and nb["cells"][0]["cell_type"] == "markdown" else 0   # under the title cell
    nb["cells"].insert(at, note)
    return nb


def execute(source: Path, executed: Path) -> dict:
    """Run a notebook once, as nbval does: offline, widgets static, fixed hash seed; keep the copy when it ran without
    an error, else return a page that says it was not executed."""
    import nbformat
    from nbclient import NotebookClient

    env = {"COURSE_WIDGETS": "static", "PYTHONHASHSEED": "0", "COURSE_NETBLOCK": "1",
           "PYTHONPATH": os.pathsep.join(p for p in [str(ROOT / "tools" / "e2e" / "netblock"),
                                                      os.environ.get("PYTHONPATH", "")] if p)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)                      # the kernel inherits this process's environment
    try:
        nb = nbformat.read(str(source), as_version=4)
        t0 = time.time()
        complete = True
        try:
            NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                           resources={"metadata": {"path": str(source.parent)}}).execute()
            print(f"  executed {source.relative_to(ROOT)} in {time.time() - t0:.0f} s", flush=True)
        except Exception as exc:   # a cell timed out or the kernel died: keep the outputs so far, say so
            complete = False
            first = (str(exc).splitlines() or [""])[0]
            print(f"  WARNING: {source.relative_to(ROOT)} stopped after {time.time() - t0:.0f} s: "
                  f"{type(exc).__name__}: {first}; its page shows the outputs up to there", flush=True)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [nbformat.from_dict(o) for o in nbsave.jupyter_outputs(cell.source, cell.outputs)]
    nb.metadata["course_executed"] = {"source_sha256": sha256(source), "by": "tools/site/build.py (nbclient)"}
    error = first_error(json.loads(nbformat.writes(nb)))
    if not complete or error:                   # not kept: the next build tries again
        why = "its execution stopped" if not complete else error
        print(f"  WARNING: {source.relative_to(ROOT)}: {why}; its page shows the code without outputs", flush=True)
        return not_executed_page(json.loads(nbformat.writes(nb)), f"when the site was built, {why}")
    target = executed / source.relative_to(ROOT)
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(target))
    return json.loads(target.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------------- links
def rewrite_links(text: str, where: Path, pages: set[str], repo: str) -> str:
    """`where`: the file's path in the repository. Links to pages of the site stay; other local files -> GitHub."""
    text = text.replace(BADGE_URL, os.path.relpath(STAGE / "_static" / "colab-badge.svg", (STAGE / where).parent))

    def fix(m: re.Match) -> str:
        target = m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^_static/|^(\.\./)*_static/", target):
            return m.group(0)
        path, _, frag = target.partition("#")
        resolved = os.path.normpath((where.parent / path).as_posix())
        resolved = {"README.md": "index.md", "assets/glossary/glossary.csv": "glossary.md"}.get(resolved, resolved)
        if resolved in pages:
            rel = os.path.relpath(resolved, where.parent.as_posix() or ".")
            return m.group(1) + rel + (f"#{frag}" if frag else "") + m.group(3)
        kind = "tree" if (ROOT / resolved).is_dir() else "blob"
        return m.group(1) + f"{repo}/{kind}/main/{resolved}" + (f"#{frag}" if frag else "") + m.group(3)

    return LINK.sub(fix, text)


def glossary_page() -> str:
    rows = list(csv.DictReader((ROOT / "assets" / "glossary" / "glossary.csv").open(encoding="utf-8")))
    names = {p.name[:2]: p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    lines = ["# Glossary · 术语表", "",
             "The course's technical terms in English and Chinese, with the notebook that introduces each one "
             "(from `assets/glossary/glossary.csv`; notebook 00 shows the same table). "
             "本课程的中英文术语对照，以及首次介绍该术语的笔记本。", "",
             ":::{list-table}", ":header-rows: 1", ":class: course-glossary", "",
             "* - English", "  - 中文", "  - meaning", "  - notebook"]
    for r in rows:
        nb = r["notebook"].strip().zfill(2)
        link = f"[{nb}](notebooks/{names[nb]}.ipynb)" if nb in names else nb
        lines += [f"* - {r['term_en'].strip()}", f"  - {r['term_zh'].strip()}", f"  - {r['definition'].strip()}",
                  f"  - {link}"]
    return "\n".join(lines + [":::", ""])


def toctree(caption: str, entries: list[str]) -> str:
    return "\n".join(["", "```{toctree}", ":hidden:", f":caption: {caption}", ""] + entries + ["```", ""])


# ----------------------------------------------------------------------------------------------------- build
def stage(executed: Path, may_execute: bool, report: Path | None = None, notebooks: list[Path] | None = None,
          where_to: Path = STAGE, reference_pages: bool = True) -> list[str]:
    """Lay out the pages in `where_to`; `notebooks` (default: all of the course's) are the notebooks published;
    reference_pages=False leaves out every page but the home page and the notebooks (a quick preview, the tests)."""
    shutil.rmtree(where_to, ignore_errors=True)
    where_to.mkdir(parents=True)
    shutil.copytree(ROOT / "docs" / "_static", where_to / "_static")
    repo = repository_url()
    notebooks = course_notebooks() if notebooks is None else [Path(p).resolve() for p in notebooks]
    docs = sorted(p for p in (ROOT / "docs").glob("*.md")) if reference_pages else []
    extra_pages = [p for p in PAGES if (ROOT / p).exists()] if reference_pages else []
    pages = {"index.md"} | ({"glossary.md"} if reference_pages else set()) | set(extra_pages)
    pages |= {p.relative_to(ROOT).as_posix() for p in notebooks + docs}

    reported = report_failures(report) if report is not None else set()
    copies = {source: executed_copy(source, executed) for source in notebooks}
    # The report speaks of the source the test run saw: it counts unless this build would execute a newer one.
    failed = [source.relative_to(ROOT).as_posix() for source, nb in copies.items()
              if (nb is not None and failed_copy(nb))
              or (source.relative_to(ROOT).as_posix() in reported and (nb is not None or not may_execute))]
    if failed:
        sys.exit(f"site not built: {', '.join(failed)} failed in the test run (its report or executed copy says "
                 "so); a notebook that failed is never published: fix it and run `make test` again")
    missing = []
    for source, nb in copies.items():
        rel = source.relative_to(ROOT).as_posix()
        if nb is None:
            if not may_execute:
                missing.append(rel)
                continue
            nb = execute(source, executed)
        else:
            nb = jupyter_view(nb)
        where = source.relative_to(ROOT)
        nb.get("metadata", {}).pop("widgets", None)     # live widget state: the site shows static figures instead
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                text = rewrite_links("".join(cell["source"]), where, pages, repo)
                cell["source"] = text.splitlines(keepends=True)
        (where_to / where).parent.mkdir(parents=True, exist_ok=True)
        (where_to / where).write_text(json.dumps(nb, ensure_ascii=False), encoding="utf-8")
    if missing:
        sys.exit("no executed copy (from `make test`) of: " + ", ".join(missing) +
                 "\nrun `make test` first, or `make site` without --no-execute to execute them here")

    main = [p for p in notebooks if p.parent.name == "notebooks"]
    solutions = [p for p in notebooks if p.parent.name == "solutions"]
    home = rewrite_links((ROOT / "README.md").read_text(encoding="utf-8"), Path("README.md"), pages, repo)
    home += toctree("Notebooks", [p.relative_to(ROOT).with_suffix("").as_posix() for p in main])
    home += toctree("Worked solutions", [p.relative_to(ROOT).with_suffix("").as_posix() for p in solutions])
    if reference_pages:
        extra = [p.relative_to(ROOT).with_suffix("").as_posix() for p in docs]
        extra += ["glossary"] + [Path(p).with_suffix("").as_posix() for p in extra_pages]
        home += toctree("Teaching and reference", extra)
        (where_to / "glossary.md").write_text(glossary_page(), encoding="utf-8")
    (where_to / "index.md").write_text(home, encoding="utf-8")
    for page in extra_pages + [p.relative_to(ROOT).as_posix() for p in docs]:
        if (ROOT / page).exists():
            (where_to / page).parent.mkdir(parents=True, exist_ok=True)
            text = rewrite_links((ROOT / page).read_text(encoding="utf-8"), Path(page), pages, repo)
            (where_to / page).write_text(text, encoding="utf-8")
    return [p.relative_to(ROOT).as_posix() for p in notebooks]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "build" / "site"))
    ap.add_argument("--executed", default=os.environ.get("COURSE_EXECUTED", str(ROOT / "artifacts" / "executed")))
    ap.add_argument("--no-execute", action="store_true", help="fail when a notebook has no current executed copy")
    ap.add_argument("--report", default=os.environ.get("COURSE_NB_REPORT",
                                                       str(ROOT / "artifacts" / "notebook_report.json")),
                    help="the test run's notebook report (conftest.py); a notebook it marks failed stops the build")
    ap.add_argument("--notebooks", nargs="+", metavar="NB", help="publish only these notebooks (a quick preview)")
    ap.add_argument("--stage", default=str(STAGE), help="where the pages are laid out before sphinx-build")
    ap.add_argument("--notebooks-only", action="store_true", help="no reference pages: the home page and notebooks")
    args = ap.parse_args(argv)
    t0 = time.time()
    notebooks = stage(Path(args.executed), may_execute=not args.no_execute, report=Path(args.report),
                      notebooks=args.notebooks, where_to=Path(args.stage),
                      reference_pages=not args.notebooks_only)
    t1 = time.time()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-c", str(ROOT / "docs"), args.stage, str(out)]
    print("+", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    print(f"site: {len(notebooks)} notebooks; pages laid out in {t1 - t0:.0f} s, sphinx-build {time.time() - t1:.0f} s"
          f" -> {out / 'index.html'}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
