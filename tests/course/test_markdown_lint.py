"""Markdown hygiene of every notebook (solutions included) and the stated runtimes against README's measured table.

Broken markup that renders silently wrong is caught here:
- control characters in a markdown cell (a "\\rho" or "\\frac" written in a non-raw Python string turns into a carriage
  return or a form feed; converting the script splits the line there, so "$\\rho = 1$" renders as "$", a line break and
  "ho = 1$" -- the bug once found in notebook 05);
- an odd number of `$$` or of inline `$` in a paragraph (a formula that never closes);
- an inline `$...$` formula broken across a line break.
Code spans and fenced code blocks are ignored; write a literal dollar sign as `\\$`.
"""
import json
import re
from pathlib import Path

import pytest

from tools import nbtools

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = nbtools.all_notebooks()

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")   # every control character except tab and newline
FENCE = re.compile(r"^\s*```.*?^\s*```[^\n]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
RUNTIME = re.compile(r"\*\*Expected runtime:\*\*\s*about\s+(\d+(?:\.\d+)?)\s*s\b")


def ids(paths):
    return [p.relative_to(ROOT).as_posix() for p in paths]


def markdown_cells(path):
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    return [(i, "".join(c["source"])) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown"]


def markup_problems(text):
    """Human-readable problems in one markdown cell's text (an empty list when it is clean)."""
    problems = []
    for m in CONTROL.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        problems.append(f"control character {m.group()!r} on line {line} (an escape like \\r or \\f in a "
                        "non-raw string?)")
    body = CODE_SPAN.sub("", FENCE.sub("", text)).replace("\\$", "")
    for paragraph in re.split(r"\n[ \t]*\n", body):
        first = paragraph.strip().splitlines()[0][:60] if paragraph.strip() else ""
        if paragraph.count("$$") % 2:
            problems.append(f"unbalanced $$ in the paragraph starting {first!r}")
            continue
        inline = re.sub(r"\$\$.*?\$\$", "", paragraph, flags=re.S)
        if inline.count("$") % 2:
            problems.append(f"unbalanced $ in the paragraph starting {first!r}")
            continue
        for formula in re.findall(r"\$(.*?)\$", inline, flags=re.S):
            if "\n" in formula:
                problems.append(f"inline formula broken across a line break: ${formula}$")
    return problems


# ---------------------------------------------------------------- the checker itself, on synthetic cells

def test_the_05_bug_is_caught():
    # What "\rho" in a non-raw string did: a carriage return, which splitlines() turned into a line break.
    raw = "At $\rho = 1$ the loss value is minus a weighted average of the advantages."
    assert any("control character" in p for p in markup_problems(raw))
    as_saved = "At $\nho = 1$ the loss value is minus a weighted average of the advantages."
    assert any("broken across a line break" in p for p in markup_problems(as_saved))


@pytest.mark.parametrize("text, problem", [
    ("a form feed from \frac: $\frac{1}{2}$", "control character"),
    ("a backspace from \beta: $\beta$", "control character"),
    ("Windows line end\r\nhere", "control character"),
    ("a formula that never closes: $x + y", "unbalanced $"),
    ("$$\nx = 1\n\nmore text", "unbalanced $$"),
    ("split inline $a +\nb$ formula", "broken across a line break"),
])
def test_broken_markup_is_reported(text, problem):
    assert any(problem in p for p in markup_problems(text)), markup_problems(text)


@pytest.mark.parametrize("text", [
    r"inline $\rho = \pi_\theta / \pi_{\text{old}}$ and display" "\n\n$$L = \\min(\\rho A, x)$$",
    "display math over lines\n$$\nx = 1\n$$\nthen text with $y$",
    "costs \\$5 and \\$10, written escaped",
    "code is ignored: `price = $5` and\n```python\nprint('$')\n```",
    "two paragraphs\n\neach with $a$ and $b$",
    "a table | $x$ |\n|---|---|\n| $y$ | 2 |",
])
def test_good_markup_passes(text):
    assert markup_problems(text) == []


# ---------------------------------------------------------------- every notebook

@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_markdown_cells_have_no_broken_markup(path):
    found = [f"cell {i}: {p}" for i, text in markdown_cells(path) for p in markup_problems(text)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_no_control_characters_in_cells(path):
    """A tab, backspace or form feed in a cell is nearly always LaTeX written into a Python string without escaping
    its backslash: "\\theta" became a tab followed by "heta", and the page shows no theta)."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    found = [f"cell {i}: {ch!r} before {''.join(c['source'])[k + 1:k + 12]!r}" for i, c in enumerate(cells)
             for k, ch in enumerate("".join(c["source"])) if ch in "\t\b\f\v\r"]
    assert not found, "\n".join(found)


# ---------------------------------------------------------------- stated runtime vs README's measured table

def measured_runtimes():
    """README's "Measured run times" table: notebook path (or 'solutions') -> (low, high) wall seconds."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Measured run times", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in section.splitlines():
        m = re.match(r"\s*(notebooks/\S+\.ipynb)\s+\d+\s+(\d+(?:\.\d+)?)\s", line)
        if m:
            out[m.group(1)] = (float(m.group(2)),) * 2
        m = re.match(r"\s*notebooks/solutions/\*.*?\s(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?) each", line)
        if m:
            out["solutions"] = (float(m.group(1)), float(m.group(2)))
    return out


def stated_runtime(path):
    title = markdown_cells(path)[0][1]
    m = RUNTIME.search(title)
    assert m, f"{path.name}: the title cell needs '**Expected runtime:** about N s ...'"
    return float(m.group(1))


def test_readme_table_is_parsed():
    table = measured_runtimes()
    assert "notebooks/00_welcome.ipynb" in table and "solutions" in table


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_expected_runtime_agrees_with_the_measured_table(path):
    """Within a factor 2 of README's CI measurement; a notebook without a README row yet only needs to state one."""
    stated = stated_runtime(path)
    rel = path.relative_to(ROOT).as_posix()
    table = measured_runtimes()
    key = "solutions" if path.parent.name == "solutions" else rel
    if key not in table:
        pytest.skip(f"{rel} has no row in README's measured table yet")
    low, high = table[key]
    assert low / 2 <= stated <= high * 2, (f"{rel} says about {stated:g} s; README measured {low:g}-{high:g} s: "
                                           "update the Expected runtime line (or the README table)")
