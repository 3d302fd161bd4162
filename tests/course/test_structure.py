"""Structure rules of course_lib (issue 14): concept modules read like the paper and stay short; no import cycles;
one definition of each basic layer."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "course_lib"
# Concept modules hold the technique, equation above code; figures and analysis live in their own modules.
CONCEPT_MODULES = ("moe", "mtp", "grpo", "mla")
MAX_LINES = 360          # "about 350 lines at most"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """course_lib modules that `path` imports anywhere in its text (top level or inside a function)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("course_lib"):
                continue
            if node.module is None or (PKG.parent / mod.replace(".", "/")).is_dir():
                # `from . import x` / `from .pkg import x`: x may be a submodule
                for alias in node.names:
                    sub = f"{mod}.{alias.name}"
                    if (PKG.parent / (sub.replace(".", "/") + ".py")).exists():
                        found.add(sub)
                        continue
                    found.add(mod)
            else:
                found.add(mod)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("course_lib."))
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    files = sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)
    mods = {_module_name(p): p for p in files}
    # a package's __init__ is imported whenever one of its submodules is: that edge is not a cycle of ours
    return {m: {d for d in _imports(p) if d in mods and not m.startswith(d + ".")} for m, p in mods.items()}


def _find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_course_lib():
    graph = _graph()
    assert {"course_lib.model", "course_lib.layers", "course_lib.moe"} <= set(graph)
    assert "course_lib.layers" in graph["course_lib.model"]           # the walker sees the imports
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


ROLE_FOLDERS = ("nano", "toys", "figures", "kit", "bonus", "bench", "checks")


def _is_idea(module: str) -> bool:
    """A top-level concept module: course_lib.<idea> that is a file, not a role folder."""
    parts = module.split(".")
    return len(parts) == 2 and parts[1] not in ROLE_FOLDERS


def test_ideas_import_only_ideas_and_kit():
    """The layout's one rule for imports: an idea may use other ideas and the plumbing in kit/, never the capstone,
    the toys, the figures, the benchmarks, the checks or a bonus (those sit below the ideas and use them)."""
    graph = _graph()
    ideas = [m for m in graph if _is_idea(m)]
    assert {"course_lib.moe", "course_lib.mla", "course_lib.mhc"} <= set(ideas)
    bad = {m: sorted(d for d in graph[m] if not (_is_idea(d) or d == "course_lib" or d.startswith("course_lib.kit")))
           for m in ideas}
    assert not {m: d for m, d in bad.items() if d}, f"ideas importing from a role folder: {bad}"


def test_nothing_but_bench_and_its_own_tests_imports_a_bonus():
    graph = _graph()
    users = sorted(m for m, deps in graph.items() if any(d.startswith("course_lib.bonus") for d in deps)
                   and not m.startswith(("course_lib.bonus", "course_lib.bench")))
    assert not users, f"{users} import course_lib.bonus: a bonus is optional, the course must not depend on it"


def test_layers_import_nothing_but_rope_and_the_checks():
    """Every model may import course_lib.layers; it depends on no other course module (so no cycle can go through it)
    but rope and kit.validate, which import no course module at all."""
    graph = _graph()
    assert graph["course_lib.layers"] <= {"course_lib.rope", "course_lib.kit.validate"}
    assert graph["course_lib.kit.validate"] == set()


@pytest.mark.parametrize("module", ["moe", "mla"])     # model <-> moe and model <-> mla (then attention.py) used to cycle
def test_module_imports_alone_in_a_fresh_interpreter(module):
    code = f"import course_lib.{module}"
    done = subprocess.run([sys.executable, "-c", code], cwd=PKG.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("module", CONCEPT_MODULES)
def test_concept_modules_stay_short(module):
    n = len((PKG / f"{module}.py").read_text().splitlines())
    assert n <= MAX_LINES, f"course_lib/{module}.py has {n} lines (max {MAX_LINES}); move figures/analysis out"


def test_one_definition_of_each_basic_layer():
    """RMSNorm, SwiGLU and the MHA/GQA attention are defined once, in course_lib.layers."""
    basic = {"RMSNorm", "SwiGLU", "GQA", "MHA", "MQA", "CausalSelfAttention"}
    where = {}
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name in basic:
                where.setdefault(node.name, []).append(_module_name(path))
    assert "CausalSelfAttention" not in where
    for name, modules in where.items():
        assert modules == ["course_lib.layers"], f"{name} defined in {modules}"
