"""The notebook conventions of CONTRIBUTING.md, checked on every notebook in the repository."""
import json
import re
import subprocess
from pathlib import Path

import pytest

from tools import nbtools

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = nbtools.all_notebooks()
MAIN = [p for p in NOTEBOOKS if p.parent.name == "notebooks"]
SOLUTIONS = [p for p in NOTEBOOKS if p.parent.name == "solutions"]


def load(p):
    return json.loads(p.read_text(encoding="utf-8"))


def ids(paths):
    return [p.relative_to(ROOT).as_posix() for p in paths]


def markdown(nb):
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]


def test_there_are_notebooks():
    assert any(p.name == "00_welcome.ipynb" for p in MAIN)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_committed_without_outputs(path):
    for i, cell in enumerate(load(path)["cells"]):
        if cell["cell_type"] == "code":
            assert not cell["outputs"] and cell["execution_count"] is None, f"cell {i} has outputs; run tools/nbtools.py strip"


@pytest.mark.parametrize("path", MAIN, ids=ids(MAIN))
def test_name_pattern(path):
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_setup_cell_and_badge_come_from_the_one_repository_url(path):
    nb = load(path)
    first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert "".join(first_code["source"]) == nbtools.setup_cell_source(), "run: python tools/nbtools.py sync"
    title = "".join(nb["cells"][0]["source"])
    assert nbtools.colab_badge(path) in title, "title cell needs this notebook's Colab badge (tools/nbtools.py sync)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_skeleton(path):
    nb = load(path)
    md = markdown(nb)
    title = "".join(nb["cells"][0]["source"])
    number = path.name[:2]
    assert nb["cells"][0]["cell_type"] == "markdown" and title.startswith(f"# {number} · ")
    for heading in ("## Learning objectives", "## Prerequisites", "**Expected runtime:**"):
        assert heading in title, f"title cell lacks {heading!r}"
    starts = [m.lstrip().splitlines()[0] if m.strip() else "" for m in md]
    text = "\n".join(md)
    if path.parent.name != "solutions":   # a solutions notebook points back to its notebook for these
        assert "## What DeepSeek actually did" in text
        assert re.search(r"^## Exercises", text, re.M)
    last_h2 = re.findall(r"^## (.+)$", text, re.M)[-1]
    assert last_h2.startswith("References"), f"the last section must be References, found {last_h2!r}"
    assert starts  # at least one markdown cell besides the title


@pytest.mark.parametrize("path", MAIN, ids=ids(MAIN))
def test_every_notebook_has_solutions_and_checked_exercises(path):
    sol = path.parent / "solutions" / (path.stem + "_solutions.ipynb")
    assert sol.exists(), f"missing {sol.relative_to(ROOT)}"
    src = "\n".join("".join(c["source"]) for c in load(path)["cells"] if c["cell_type"] == "code")
    used = set(re.findall(r"checks\.(\w+)\(", src))
    assert used, "a notebook needs at least one checked exercise"
    sol_src = "\n".join("".join(c["source"]) for c in load(sol)["cells"] if c["cell_type"] == "code")
    assert used <= set(re.findall(r"checks\.(\w+)\(", sol_src)), "the solutions notebook must check every exercise"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_no_hard_coded_cuda(path):
    src = "\n".join("".join(c["source"]) for c in load(path)["cells"] if c["cell_type"] == "code")
    assert not re.search(r"""['"]cuda['"]|\.cuda\(\)""", src), "use course_lib.kit.device.get_device()"


def test_no_machine_paths_in_tracked_files():
    """No file names this machine's folders (the clone's parent, the temp folder, the home folder)."""
    import tempfile

    machine = {str(ROOT.parent) + "/", tempfile.gettempdir() + "/", str(Path.home()) + "/"}
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    offenders = []
    for name in files:
        p = ROOT / name
        if not p.is_file():
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        offenders += [f"{name}: {m}" for m in machine if m != "//" and m in text]
    assert not offenders, offenders[:5]


def test_py2nb_round_trip(tmp_path):
    script = tmp_path / "nb.py"
    script.write_text("# %% [markdown]\n# # 99 · T\n#\n# text\n\n# %%\nx = 1\n\n# %%\nprint(x)\n", encoding="utf-8")
    out = tmp_path / "99_t.ipynb"
    nbtools.py2nb(script, out)
    nb = load(out)
    assert [c["cell_type"] for c in nb["cells"]] == ["markdown", "code", "code"]
    assert "".join(nb["cells"][0]["source"]) == "# 99 · T\n\ntext"
    assert "".join(nb["cells"][1]["source"]) == nbtools.setup_cell_source()  # the first code cell becomes the setup cell
    back = tmp_path / "back.py"
    nbtools.nb2py(out, back)
    assert "print(x)" in back.read_text(encoding="utf-8")
