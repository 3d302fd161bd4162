"""Rule-based rewards on well-formed and adversarial completions: they never crash and give the documented outcome."""
import pytest

from course_lib import rewards as R

GOOD = "<think>8+7+0=15</think><answer>825</answer>"


# ---------------------------------------------------------------- accuracy

@pytest.mark.parametrize("text,expected", [
    (GOOD, 1.0),
    ("<answer>825</answer>", 1.0),                                  # accuracy ignores the format
    ("<answer> 825 </answer>", 1.0),                                # surrounding spaces are fine
    ("<answer>824</answer>", 0.0),
    ("", 0.0),                                                      # empty
    ("825", 0.0),                                                   # no tags
    ("<answer>825", 0.0),                                           # missing closing tag
    ("825</answer>", 0.0),                                          # missing opening tag
    ("</answer>825<answer>", 0.0),                                  # tags in the wrong order
    ("<answer><answer>825</answer></answer>", 0.0),                 # nested tags
    ("<answer>825</answer><answer>825</answer>", 0.0),              # several answers, even if all right
    ("<answer>824</answer><answer>825</answer>", 0.0),              # hedging
    ("<answer>+825</answer>", 0.0),                                 # only -?[0-9]+ is a number
    ("<answer>825.0</answer>", 0.0),
    ("<answer>8.25e2</answer>", 0.0),
    ("<answer>800+25</answer>", 0.0),                               # never evaluated
    ("<answer>__import__('os')</answer>", 0.0),
    ("<answer>\u0668\u0662\u0665</answer>", 0.0),                   # Arabic-Indic digits: int() would accept them
    ("<answer>\uff18\uff12\uff15</answer>", 0.0),                   # full-width digits
    ("<answer>" + "9" * 5000 + "</answer>", 0.0),                   # huge number: rejected before int()
    ("<think>" + "x" * 200_000 + "</think><answer>825</answer>", 1.0),  # very long reasoning still scored
])
def test_accuracy_reward_cases(text, expected):
    assert R.accuracy_reward([text], [825]) == [expected]


def test_negative_and_big_answers():
    assert R.accuracy_reward(["<answer>-12</answer>"], [-12]) == [1.0]
    big = 10 ** 29
    assert R.accuracy_reward([f"<answer>{big}</answer>"], [big]) == [1.0]
    assert R.parse_int("9" * (R.MAX_ANSWER_DIGITS + 1)) is None


def test_extract_and_parse():
    assert R.extract_answer(GOOD) == "825"
    assert R.extract_answer("<answer></answer>") == ""
    assert R.parse_int("") is None
    assert R.parse_int(None) is None
    assert R.parse_int(" 007 ") == 7


def test_accuracy_validation():
    with pytest.raises(ValueError, match="answers"):
        R.accuracy_reward([GOOD, GOOD], [825])
    with pytest.raises(ValueError, match="completions"):
        R.accuracy_reward(GOOD, [825])
    with pytest.raises(ValueError, match="completions"):
        R.accuracy_reward([None], [825])


# ---------------------------------------------------------------- format

@pytest.mark.parametrize("text,expected", [
    (GOOD, 1.0),
    ("<think></think><answer>825</answer>", 1.0),                   # empty reasoning is allowed by default
    ("  <think>a</think>\n<answer>1</answer>\n", 1.0),              # whitespace around / between blocks
    ("", 0.0),
    ("<answer>825</answer>", 0.0),                                  # no think block
    ("<think>a</think>", 0.0),                                      # no answer block
    ("<answer>1</answer><think>a</think>", 0.0),                    # wrong order
    ("<think>a</think>so<answer>1</answer>", 0.0),                  # text between the blocks
    ("hi<think>a</think><answer>1</answer>", 0.0),                  # text before
    ("<think>a</think><answer>1</answer>bye", 0.0),                 # text after
    ("<think><think>a</think></think><answer>1</answer>", 0.0),     # nested
    ("<think>a</think><answer>1</answer><answer>2</answer>", 0.0),  # several answers
    ("<think>a<answer>1</answer></think>", 0.0),                    # answer inside the reasoning
    ("<think>a</answer></think><answer>1<think></answer>", 0.0),    # every tag once, interleaved
    ("<think>" + "\u4e2d" * 100_000 + "</think><answer>1</answer>", 1.0),
])
def test_format_reward_cases(text, expected):
    assert R.format_reward([text]) == [expected]


def test_format_require_thinking():
    assert R.format_reward(["<think></think><answer>1</answer>", "<think> </think><answer>1</answer>", GOOD],
                           require_thinking=True) == [0.0, 0.0, 1.0]


# ---------------------------------------------------------------- language consistency

@pytest.mark.parametrize("text,target,expected", [
    ("<think>add the units then carry</think><answer>1</answer>", "en", 1.0),
    ("<think>add the units then carry</think><answer>1</answer>", "zh", 0.0),
    ("<think>先 add 个位</think><answer>1</answer>", "en", 1 / 4),   # tokens: 先, add, 个, 位
    ("<think>先 add 个位</think><answer>1</answer>", "zh", 3 / 4),
    ("<think>8+7+0=15</think><answer>825</answer>", "en", 1.0),      # only digits and symbols: nothing mixed
    ("<think>ok</think><answer>全部</answer>", "en", 1.0),            # the answer block is not reasoning
    ("no tags at all 但是", "en", 4 / 6),                             # no think block: the whole text is used
    ("", "en", 1.0),
])
def test_language_consistency_cases(text, target, expected):
    assert R.language_reward([text], target) == [pytest.approx(expected)]


def test_language_validation():
    with pytest.raises(ValueError, match="target"):
        R.language_reward(["x"], "fr")


def test_rewards_never_crash_on_junk():
    junk = ["<", ">", "</", "<think", "</answer", "<answer>-</answer>", "<answer>--1</answer>", "\x00" * 10,
            "<think>" * 1000 + "</answer>" * 1000, "\ud800", "🙂<answer>🙂</answer>", "<ANSWER>1</ANSWER>"]
    for fn in (lambda c: R.accuracy_reward(c, [1] * len(c)), R.format_reward, R.language_reward):
        out = fn(junk)
        assert len(out) == len(junk) and all(v in (0.0, 1.0) or 0.0 <= v <= 1.0 for v in out)
    assert R.accuracy_reward(junk, [1] * len(junk)) == [0.0] * len(junk)
    assert R.format_reward(junk) == [0.0] * len(junk)
