"""Notebook tools for course authors.

    python tools/nbtools.py py2nb SCRIPT.py NOTEBOOK.ipynb   # percent-format script -> notebook without outputs
    python tools/nbtools.py nb2py NOTEBOOK.ipynb SCRIPT.py   # and back, for editing in a text editor
    python tools/nbtools.py sync                             # rewrite every setup cell and Colab badge from pyproject
    python tools/nbtools.py strip [NOTEBOOK ...]             # remove outputs and execution counts

The course repository's URL is defined once, in pyproject.toml ([project.urls] Repository); `sync` writes it into
each notebook's setup cell and Colab badge, and tests/course/test_conventions.py fails when a notebook disagrees.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def repo_url() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    m = re.search(r'^Repository\s*=\s*"([^"]+)"', text, re.M)
    if not m:
        raise ValueError("pyproject.toml has no [project.urls] Repository entry")
    return m.group(1).rstrip("/")


def setup_cell_source(url: str | None = None) -> str:
    url = url or repo_url()
    return f'''# Setup: does nothing in a clone of the course; where course_lib is missing (Colab) it fetches the course.
import importlib.util, os, subprocess, sys
for up in ("..", os.path.join("..", "..")):  # a clone opened without `make lab`: use its course_lib
    if importlib.util.find_spec("course_lib") is None and os.path.isdir(os.path.join(up, "course_lib")):
        sys.path.insert(0, os.path.abspath(up))
if importlib.util.find_spec("course_lib") is None:
    COURSE_REPO = os.environ.get("COURSE_REPO_URL", "{url}")
    if not os.path.isdir("inside-deepseek"):
        subprocess.run(["git", "clone", "-q", "--depth", "1", COURSE_REPO, "inside-deepseek"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "inside-deepseek"], check=True)
    sys.path.insert(0, os.path.abspath("inside-deepseek"))'''


def colab_badge(nb_path: Path, url: str | None = None) -> str:
    url = url or repo_url()
    gh = url.replace("https://github.com/", "")
    rel = nb_path.resolve().relative_to(ROOT).as_posix()
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{gh}/blob/main/{rel})")


BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")


def _cell(kind: str, source: str) -> dict:
    cell = {"cell_type": kind, "metadata": {}, "source": source.strip("\n").splitlines(keepends=True)}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def new_notebook(cells: list[dict]) -> dict:
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def py2nb(script: Path, notebook: Path) -> None:
    """Cells start at lines '# %%' (code) or '# %% [markdown]' (markdown; each line starts with '# ')."""
    cells, kind, buf = [], None, []

    def flush():
        if kind is None:
            return
        text = "\n".join(buf).strip("\n")
        if kind == "markdown":
            text = "\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in text.splitlines())
        if text.strip():
            cells.append(_cell(kind, text))

    for line in script.read_text(encoding="utf-8").splitlines():
        if line.startswith("# %%"):
            flush()
            kind, buf = ("markdown" if "[markdown]" in line else "code"), []
        else:
            buf.append(line)
    flush()
    for i, c in enumerate(cells):
        c["id"] = f"cell-{i:03d}"
    nb = new_notebook(cells)
    sync_notebook(nb, notebook)
    write(nb, notebook)


def nb2py(notebook: Path, script: Path) -> None:
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    parts = []
    for c in nb["cells"]:
        src = "".join(c["source"])
        if c["cell_type"] == "markdown":
            parts.append("# %% [markdown]\n" + "\n".join(("# " + l) if l else "#" for l in src.splitlines()))
        else:
            parts.append("# %%\n" + src)
    script.write_text("\n\n".join(parts) + "\n", encoding="utf-8")


def strip(nb: dict) -> dict:
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
        c.get("metadata", {}).pop("execution", None)
    return nb


def sync_notebook(nb: dict, path: Path) -> None:
    """First code cell := the setup cell; Colab badge in the title cell := this notebook's badge."""
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    if code:
        code[0]["source"] = setup_cell_source().splitlines(keepends=True)
    title = nb["cells"][0]
    if title["cell_type"] == "markdown" and path.resolve().is_relative_to(ROOT):
        text = "".join(title["source"])
        badge = colab_badge(path)
        text = BADGE_RE.sub(badge, text) if BADGE_RE.search(text) else text
        title["source"] = text.splitlines(keepends=True)


def write(nb: dict, path: Path) -> None:
    strip(nb)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def all_notebooks() -> list[Path]:
    return sorted(p for p in NOTEBOOKS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    cmd, args = argv[0], [Path(a) for a in argv[1:]]
    if cmd == "py2nb" and len(args) == 2:
        py2nb(*args)
    elif cmd == "nb2py" and len(args) == 2:
        nb2py(*args)
    elif cmd in ("sync", "strip"):
        for p in args or all_notebooks():
            nb = json.loads(p.read_text(encoding="utf-8"))
            if cmd == "sync":
                sync_notebook(nb, p)
            write(nb, p)
            print(f"{cmd}: {p.relative_to(ROOT) if p.is_absolute() else p}")
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
