"""Build the course website (`make site`): a static HTML site of every notebook with its outputs.

    python tools/site/build.py [--out build/site] [--executed artifacts/executed] [--no-execute]

1. Notebooks: every notebooks/NN_*.ipynb and notebooks/solutions/*.ipynb. Each comes with the outputs of the test run
   when artifacts/executed/ holds a copy of the same source (tools/site/nbsave.py writes them during `make test`);
   otherwise this script executes it once with nbclient, offline and with COURSE_WIDGETS=static (widgets appear as
   their static figures), and keeps the copy there for the next build. `--no-execute` (CI) fails instead, so CI
   never executes a notebook twice.
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


def execute(source: Path, executed: Path) -> dict:
    """Run a notebook once, as nbval does: offline, widgets static, fixed hash seed; keep the copy."""
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
            cell.outputs = [nbformat.from_dict(o) for o in (nbsave._static(o) for o in cell.outputs) if o is not None]
    nb.metadata["course_executed"] = {"source_sha256": sha256(source), "by": "tools/site/build.py (nbclient)"}
    if not complete:                            # not kept: the next build tries again
        return json.loads(nbformat.writes(nb))
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
def stage(executed: Path, may_execute: bool) -> list[str]:
    shutil.rmtree(STAGE, ignore_errors=True)
    STAGE.mkdir(parents=True)
    shutil.copytree(ROOT / "docs" / "_static", STAGE / "_static")
    repo = repository_url()
    notebooks = course_notebooks()
    docs = sorted(p for p in (ROOT / "docs").glob("*.md"))
    pages = {"index.md", "glossary.md"} | {p for p in PAGES if (ROOT / p).exists()}
    pages |= {p.relative_to(ROOT).as_posix() for p in notebooks + docs}

    missing = []
    for source in notebooks:
        nb = executed_copy(source, executed)
        if nb is None:
            if not may_execute:
                missing.append(source.relative_to(ROOT).as_posix())
                continue
            nb = execute(source, executed)
        where = source.relative_to(ROOT)
        nb.get("metadata", {}).pop("widgets", None)     # live widget state: the site shows static figures instead
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                text = rewrite_links("".join(cell["source"]), where, pages, repo)
                cell["source"] = text.splitlines(keepends=True)
        (STAGE / where).parent.mkdir(parents=True, exist_ok=True)
        (STAGE / where).write_text(json.dumps(nb, ensure_ascii=False), encoding="utf-8")
    if missing:
        sys.exit("no executed copy (from `make test`) of: " + ", ".join(missing) +
                 "\nrun `make test` first, or `make site` without --no-execute to execute them here")

    main = [p for p in notebooks if p.parent.name == "notebooks"]
    solutions = [p for p in notebooks if p.parent.name == "solutions"]
    home = rewrite_links((ROOT / "README.md").read_text(encoding="utf-8"), Path("README.md"), pages, repo)
    home += toctree("Notebooks", [p.relative_to(ROOT).with_suffix("").as_posix() for p in main])
    home += toctree("Worked solutions", [p.relative_to(ROOT).with_suffix("").as_posix() for p in solutions])
    extra = [p.relative_to(ROOT).with_suffix("").as_posix() for p in docs]
    extra += ["glossary"] + [Path(p).with_suffix("").as_posix() for p in PAGES if (ROOT / p).exists()]
    home += toctree("Teaching and reference", extra)
    (STAGE / "index.md").write_text(home, encoding="utf-8")
    (STAGE / "glossary.md").write_text(glossary_page(), encoding="utf-8")
    for page in PAGES + [p.relative_to(ROOT).as_posix() for p in docs]:
        if (ROOT / page).exists():
            (STAGE / page).parent.mkdir(parents=True, exist_ok=True)
            text = rewrite_links((ROOT / page).read_text(encoding="utf-8"), Path(page), pages, repo)
            (STAGE / page).write_text(text, encoding="utf-8")
    return [p.relative_to(ROOT).as_posix() for p in notebooks]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "build" / "site"))
    ap.add_argument("--executed", default=os.environ.get("COURSE_EXECUTED", str(ROOT / "artifacts" / "executed")))
    ap.add_argument("--no-execute", action="store_true", help="fail when a notebook has no current executed copy")
    args = ap.parse_args(argv)
    t0 = time.time()
    notebooks = stage(Path(args.executed), may_execute=not args.no_execute)
    t1 = time.time()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-c", str(ROOT / "docs"), str(STAGE), str(out)]
    print("+", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    print(f"site: {len(notebooks)} notebooks; pages laid out in {t1 - t0:.0f} s, sphinx-build {time.time() - t1:.0f} s"
          f" -> {out / 'index.html'}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
