"""The exercise framework itself, and every registered exercise: its reference passes, its wrong answers fail."""
import pytest
import torch

from course_lib import checks
from course_lib.checks.core import Exercise, close, register

EXERCISES = checks.all_exercises()


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_reference_solution_passes(name, capsys):
    ex = EXERCISES[name]
    answer = ex.reference() if ex.kind == "value" else ex.reference
    assert ex.check(answer).passed, capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_every_wrong_answer_fails(name):
    ex = EXERCISES[name]
    assert ex.wrong, f"exercise {name} declares no wrong answer, so nothing proves its check can fail"
    for wrong in ex.wrong:
        assert not ex.check(wrong, quiet=True).passed, f"{name}: wrong answer {wrong!r} passed"


def test_welcome_exercises_are_registered():
    assert {"v3_active_fraction", "softmax_last_dim"} <= set(EXERCISES)


def test_wrong_answer_prints_case_expected_got_and_how_to_ask_for_a_hint(capsys):
    ex = checks.softmax_last_dim
    result = ex(lambda x: torch.sigmoid(x))
    out = capsys.readouterr().out
    assert not result
    assert "case 1 of" in out and "expected:" in out and "got:" in out
    assert f"{ex.module}.softmax_last_dim.hint()" in out
    assert not any(h in out for h in ex.hints), "a hint was printed before the learner asked for it"


@pytest.mark.parametrize("stub", [..., None, lambda x: None], ids=["ellipsis", "None", "function stub"])
def test_no_hint_before_a_first_attempt(capsys, stub):
    ex = checks.softmax_last_dim
    ex(stub)
    out = capsys.readouterr().out
    assert ("no answer yet" in out or "not written yet" in out) and ".hint()" not in out
    assert not any(h in out for h in ex.hints)


def test_hints_come_one_tier_per_call():
    ex = register(cases=[(1,)], hint=("nudge text", "formula text", "code text"), name="_tiers_demo",
                  wrong=[lambda x: 0])(lambda x: x)
    try:
        import io
        from contextlib import redirect_stdout
        outs = []
        for _ in range(4):
            buf = io.StringIO()
            with redirect_stdout(buf):
                ex.hint()
            outs.append(buf.getvalue())
        assert "nudge text" in outs[0] and "formula text" not in outs[0] and "Hint 1 of 3" in outs[0]
        assert "formula text" in outs[1] and "code text" not in outs[1]
        assert "code text" in outs[2] and "again" not in outs[2]
        assert "code text" in outs[3]                      # after the last tier, the last one again
    finally:
        from course_lib.checks.core import REGISTRY
        REGISTRY.pop("_tiers_demo", None)


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_every_exercise_has_a_hint_reachable_from_its_notebook(name):
    ex = EXERCISES[name]
    assert ex.hints, f"{name} has no hint"
    assert ex.module.startswith("checks"), ex.module


def test_learner_exception_is_reported_not_raised(capsys):
    def broken(x):
        raise RuntimeError("oops")

    result = checks.softmax_last_dim(broken)
    out = capsys.readouterr().out
    assert not result and "RuntimeError: oops" in out and "Traceback" not in out


def test_wrong_type_and_missing_answers(capsys):
    assert not checks.softmax_last_dim(3)
    assert "expected a function" in capsys.readouterr().out
    assert not checks.softmax_last_dim(...)
    assert "no answer yet" in capsys.readouterr().out
    assert not checks.softmax_last_dim(lambda x: None)
    assert "returned None" in capsys.readouterr().out
    assert not checks.v3_active_fraction(lambda: 0.05)
    assert "expected a value" in capsys.readouterr().out


def test_inputs_are_protected_from_in_place_edits():
    def sneaky(x):
        x.zero_()
        return torch.softmax(x, -1)

    assert not checks.softmax_last_dim(sneaky, quiet=True)


def test_unknown_exercise_lists_the_available_ones():
    with pytest.raises(AttributeError, match="softmax_last_dim"):
        checks.no_such_exercise


def test_register_validates_its_arguments():
    with pytest.raises(ValueError, match="kind"):
        register(kind="essay")
    with pytest.raises(ValueError, match="cases"):
        register()(lambda x: x)


@pytest.mark.parametrize("expected,got,ok", [
    (1.0, 1.0 + 1e-9, True), (1.0, 1.1, False), (torch.ones(2), [1.0, 1.0], True), (torch.ones(2), torch.ones(3), False),
    ([1, 2], (1, 2), True), ({"a": 1.0}, {"a": 1.0}, True), ({"a": 1.0}, {"b": 1.0}, False), (True, 1, False),
    ("V2", "V2", True), (3, "3", False), (2.0, torch.tensor(2.0), True),
])
def test_close(expected, got, ok):
    assert close(expected, got) is ok


def test_exercise_without_registry_side_effects():
    ex = Exercise("square", lambda x: x * x, cases=[(2,), (3,)])
    assert ex.check(lambda x: x ** 2, quiet=True)
    assert not ex.check(lambda x: 2 * x, quiet=True)  # 2*2 == 2**2 but 2*3 != 9: the second case catches it


# ---- every printed character must exist in common fonts (an emoji shows as an empty box without an emoji font)
import ast  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import matplotlib  # noqa: E402

from course_lib.checks.core import FAIL_MARK, FONT_SAFE, PASS_MARK, unsafe_chars  # noqa: E402

COURSE_LIB = Path(checks.__file__).resolve().parents[1]


def _dejavu_cmaps():
    ttlib = pytest.importorskip("fontTools.ttLib")    # a matplotlib dependency
    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return {name: set(ttlib.TTFont(ttf / name).getBestCmap()) for name in ("DejaVuSans.ttf", "DejaVuSansMono.ttf")}


def test_unsafe_chars_flags_emoji_and_passes_common_symbols():
    assert unsafe_chars("\u2705 softmax_last_dim: correct!") == ["\u2705"]        # the old pass mark
    assert unsafe_chars("\u274c x: not yet \u2713 \u26a0") == ["\u26a0", "\u2713", "\u274c"]
    common = "[correct] A = (r - mean) / std \u2014 1\u20262 \u2264 3 \u2192 \u03bb=0.3, \u00d7 2 \u52a0"
    assert unsafe_chars(common) == []
    assert unsafe_chars(PASS_MARK + FAIL_MARK) == []


def test_font_safe_set_is_drawn_by_dejavu_sans_and_sans_mono():
    # the browser's sans-serif (markdown) and monospace (printed output) fonts on a plain Debian machine
    for name, cmap in _dejavu_cmaps().items():
        missing = sorted(ch for ch in FONT_SAFE if ord(ch) >= 0x20 and ord(ch) not in cmap and ord(ch) != 0xAD)
        assert not missing, f"{name} lacks {missing}"


def _all_messages(ex):
    answers = [None, ..., 3, ex.reference() if ex.kind == "value" else ex.reference, *ex.wrong]
    if ex.kind == "function":
        answers += [lambda *a: 1 / 0, lambda *a: None]
    return [ex.check(a, quiet=True).message for a in answers]


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_every_check_message_is_font_safe(name):
    for message in _all_messages(EXERCISES[name]):
        assert not unsafe_chars(message), f"{name} prints {unsafe_chars(message)} in: {message}"
    assert _all_messages(EXERCISES[name])[0].startswith(FAIL_MARK)


def _string_constants(node):
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            yield sub


def _printed_and_other_strings(tree):
    """(strings that reach the notebook as text: print, exceptions, warnings, tqdm desc; all other literals)."""
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    printed = set()
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        f = call.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        if name in ("print", "warn", "write") or name.endswith(("Error", "Exception", "Warning")):
            printed |= {id(c) for c in _string_constants(call)}
        printed |= {id(c) for kw in call.keywords if kw.arg in ("desc", "postfix") for c in _string_constants(kw)}
    every = [c for c in _string_constants(tree) if id(c) not in docstrings]
    return [c for c in every if id(c) in printed], [c for c in every if id(c) not in printed]


def test_course_lib_strings_are_font_safe():
    """Printed text must be in FONT_SAFE (the browser draws it); the other literals end up in matplotlib figures,
    drawn with matplotlib's own DejaVu Sans, so they must at least be in that font."""
    dejavu = _dejavu_cmaps()["DejaVuSans.ttf"]
    bad = []
    for path in sorted(COURSE_LIB.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        printed, other = _printed_and_other_strings(tree)
        where = os.path.relpath(path, COURSE_LIB.parent)
        bad += [f"{where}:{c.lineno} prints {unsafe_chars(c.value)}" for c in printed if unsafe_chars(c.value)]
        bad += [f"{where}:{c.lineno} draws {[ch for ch in set(c.value) if ord(ch) not in dejavu]}" for c in other
                if unsafe_chars(c.value) and any(ord(ch) not in dejavu for ch in unsafe_chars(c.value))]
    assert not bad, "\n".join(bad)


def test_course_lib_scan_would_catch_an_emoji():
    printed, other = _printed_and_other_strings(ast.parse('def f():\n    "doc \u2705"\n    print(f"\u2705 {1}")\n'
                                                          'x = "\u2705"\nraise ValueError("\u274c bad")\n'))
    assert sorted(unsafe_chars(c.value)[0] for c in printed) == ["\u2705", "\u274c"]
    assert [c.value for c in other] == ["\u2705"]
