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


def test_wrong_answer_prints_case_expected_got_and_hint(capsys):
    result = checks.softmax_last_dim(lambda x: torch.sigmoid(x))
    out = capsys.readouterr().out
    assert not result
    assert "case 1 of" in out and "expected:" in out and "got:" in out and "Hint:" in out


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
