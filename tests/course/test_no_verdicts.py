"""No notebook states a verdict on a goal, or turns a wall-clock measurement into words.

A notebook prints measurements as numbers with units, and conclusions that follow from deterministic values only: a
learner on a slow or busy machine must read the same sentences as one on a fast machine. Whether a speed-up reaches
what the course aimed for is a question for `python -m course_lib.bench <name>`, which may print "... on this
machine: yes/no". This test reads every notebook's markdown and the strings of its code cells (what gets printed),
and the strings of course_lib outside course_lib/bench (which notebooks print), and fails with the notebook and cell
of each verdict it finds.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))

# A goal judged in words: "goal (>= 80% ...): met", "Our goal ... was at most 1.5x", "NOT met", "目标为至多 1.5 倍：已达到".
VERDICT = re.compile(
    r"\bgoals?\b[^.\n]*?(\bmet\b|\breached\b|\bachieved\b|\bmissed\b|\bat (most|least)\b|<=|>=|≤|≥)"
    r"|\b(not|NOT) met\b|:\s*met\b|\btargets? (was |were )?(met|reached|achieved|missed)\b"
    r"|已达到|未达到|已达成|未达成|达标|目标为", re.IGNORECASE)
# Words a condition may pick between only when the condition is deterministic; on a measured time they are a verdict.
VERDICT_WORDS = re.compile(r"^\W*(not\s+)?(met|yes|no|pass(ed)?|fail(ed)?|ok|faster|slower|quicker|achieved|reached|"
                           r"missed|✓|✗|已达到|未达到|更快|更慢)\W*$", re.IGNORECASE)
# A notebook calling a function that judges a goal.
GOAL_CALL = re.compile(r"\b\w*goal\w*\s*\(", re.IGNORECASE)


def _code(source: str) -> str:
    """A cell's Python without IPython's magics and shell lines."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _strings(tree: ast.AST, skip_docstrings: bool = False):
    """(line, text) of every string constant, f-string pieces included; optionally without docstrings."""
    docs = set()
    if skip_docstrings:
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    docs.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def _chosen_words(tree: ast.AST):
    """(line, a, b) of each `a if cond else b` whose two branches are string constants."""
    for node in ast.walk(tree):
        if isinstance(node, ast.IfExp) and all(isinstance(x, ast.Constant) and isinstance(x.value, str)
                                                for x in (node.body, node.orelse)):
            yield node.lineno, node.body.value, node.orelse.value


def code_findings(code: str, skip_docstrings: bool = False) -> list[str]:
    """Verdicts in Python source: verdict phrases in its strings, words chosen by a condition, goal-judging calls."""
    tree = ast.parse(code)
    found = [f"line {n}: string {s!r}" for n, s in _strings(tree, skip_docstrings)
             if VERDICT.search(s)]
    found += [f"line {n}: {a!r} if ... else {b!r}" for n, a, b in _chosen_words(tree)
              if VERDICT_WORDS.match(a) or VERDICT_WORDS.match(b)]
    found += [f"line {i}: calls {m.group(0).rstrip('( ')}()" for i, line in enumerate(code.splitlines(), 1)
              for m in GOAL_CALL.finditer(line.split("#")[0])]
    return found


def markdown_findings(text: str) -> list[str]:
    return [f"line {i}: {line.strip()[:160]!r}" for i, line in enumerate(text.splitlines(), 1) if VERDICT.search(line)]


def notebook_findings(path: Path) -> list[str]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    found = []
    for i, cell in enumerate(cells):
        source = "".join(cell["source"])
        where = f"{path.relative_to(ROOT).as_posix()} cell {i} ({cell['cell_type']}, id {cell.get('id')})"
        hits = code_findings(_code(source)) if cell["cell_type"] == "code" else markdown_findings(source)
        found += [f"{where} {h}" for h in hits]
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_states_no_verdict(path):
    found = notebook_findings(path)
    assert not found, ("a notebook prints measurements and deterministic conclusions only; judge a goal or a measured "
                       "speed in `python -m course_lib.bench` instead:\n" + "\n".join(found))


def test_course_lib_prints_no_verdict():
    """course_lib's text ends up in notebooks; only its benchmarks may judge a measurement."""
    found = []
    for path in sorted((ROOT / "course_lib").rglob("*.py")):
        if "bench" in path.relative_to(ROOT / "course_lib").parts:
            continue
        found += [f"{path.relative_to(ROOT).as_posix()} {h}"
                  for h in code_findings(path.read_text(encoding="utf-8"), skip_docstrings=True)
                  if "calls" not in h]
    assert not found, "course_lib text that judges a goal or a measured speed:\n" + "\n".join(found)


@pytest.mark.parametrize("text", [
    'print(f"goal (>= {a:.0%} and >= {s:g}x, exact): {\'met\' if ok else \'NOT met\'}")',
    'print("speed-up", r, "faster" if r > 1 else "slower")',
    'best, _, line = nano_analysis.speculative_goal(spec)',
    'msg = "目标为至多 1.5 倍：已达到"',
])
def test_the_scan_finds_verdicts_in_code(text):
    assert code_findings(text)


@pytest.mark.parametrize("text", [
    "Our goal for this toy was at most 1.5x: met.",
    "The goal line is judged from these numbers: at least 80% acceptance",
    "（目标为至多 1.5 倍：已达到）",
])
def test_the_scan_finds_verdicts_in_markdown(text):
    assert markdown_findings(text)


@pytest.mark.parametrize("text", [
    'print(f"measured speed-up {t0 / t1:.2f}x (ideal {ideal:.2f}x)")',
    'verdict_text = "lower" if d < -2 * se else "not clearly different"',      # a deterministic loss comparison
    'print("identical to greedy:", same)',
])
def test_the_scan_leaves_measurements_alone(text):
    assert not code_findings(text)


def test_the_scan_leaves_other_senses_of_goal_alone():
    assert not markdown_findings("The goal is to maximise the expected reward $J(\\theta)$.")
    assert not markdown_findings("每个预测深度的目标与 MTP 损失")
