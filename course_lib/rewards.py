"""Rule-based rewards for R1-Zero-style RL (DeepSeek-R1, arXiv 2501.12948, §2.2.2 and §2.3.3).

R1-Zero uses no neural reward model -- only rules that a program can check:
  * accuracy reward: is the final answer (inside <answer>...</answer>) correct?
  * format reward:   is the reasoning inside <think>...</think>, followed by the answer?
  * language-consistency reward (added for R1, §2.3.3): the share of the reasoning written in the target language.

Model text is untrusted input: nothing here evaluates it, every parser is linear-time string scanning, and each
function returns a number for any string (malformed, empty, huge, unicode) -- the documented outcomes below are
tested in tests/test_rewards.py.
"""
from __future__ import annotations

import re
from typing import Sequence

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

# An integer answer: optional minus sign, ASCII digits only. re.ASCII matters: without it \d would also accept
# Arabic-Indic or full-width digits, which int() silently converts.
_INT = re.compile(r"-?[0-9]+", re.ASCII)
MAX_ANSWER_DIGITS = 30   # longer "numbers" are rejected before int() (int of a 1e6-digit string is slow and pointless)


def _check_texts(completions) -> list[str]:
    if isinstance(completions, str):
        raise ValueError("completions must be a list of strings, not a single string")
    completions = list(completions)
    for c in completions:
        if not isinstance(c, str):
            raise ValueError(f"completions must contain strings, got {type(c).__name__}")
    return completions


def _between(text: str, open_tag: str, close_tag: str) -> str | None:
    """The text between the ONLY open_tag and the ONLY close_tag after it; None if either is missing or repeated."""
    if text.count(open_tag) != 1 or text.count(close_tag) != 1:
        return None
    start = text.index(open_tag) + len(open_tag)
    end = text.index(close_tag)
    if end < start:
        return None
    return text[start:end]


def extract_answer(text: str) -> str | None:
    """The content of the single <answer>...</answer> block, stripped; None when there is not exactly one.

    Several answer blocks get None on purpose: a policy must not collect reward by hedging with many answers.
    Nested tags ('<answer><answer>5</answer></answer>') repeat the tags, so they give None as well.
    """
    inner = _between(text, ANSWER_OPEN, ANSWER_CLOSE)
    return None if inner is None else inner.strip()


def parse_int(s: str | None) -> int | None:
    """An integer from an answer string, or None. Accepts only '-?[0-9]+' (ASCII) of at most MAX_ANSWER_DIGITS digits
    after stripping spaces; '+5', '5.0', '1e3', '٣' (Arabic-Indic three), '５' (full-width five) and '12 34' all give
    None. Never evaluates anything."""
    if s is None:
        return None
    s = s.strip()
    if not _INT.fullmatch(s) or len(s.lstrip("-")) > MAX_ANSWER_DIGITS:
        return None
    return int(s)


def accuracy_reward(completions: Sequence[str], answers: Sequence[int]) -> list[float]:
    """1.0 where the completion's single <answer> parses to the reference integer, else 0.0 (R1 §2.2.2)."""
    completions = _check_texts(completions)
    answers = list(answers)
    if len(answers) != len(completions):
        raise ValueError(f"answers has {len(answers)} entries for {len(completions)} completions")
    return [1.0 if (v := parse_int(extract_answer(c))) is not None and v == int(a) else 0.0
            for c, a in zip(completions, answers)]


def has_format(text: str, require_thinking: bool = False) -> bool:
    """True for exactly '<think>REASONING</think><answer>ANSWER</answer>' (whitespace allowed around and between the
    blocks): each tag once, in that order, nothing outside the blocks. require_thinking=True also rejects an empty
    reasoning block."""
    t = text.strip()
    if any(t.count(tag) != 1 for tag in TAGS):
        return False
    i0, i1, i2, i3 = (t.index(tag) for tag in TAGS)
    if not (i0 == 0 and i0 < i1 < i2 < i3 and t.endswith(ANSWER_CLOSE)):
        return False
    if t[i1 + len(THINK_CLOSE):i2].strip():   # text between </think> and <answer>
        return False
    return not require_thinking or bool(t[len(THINK_OPEN):i1].strip())


def format_reward(completions: Sequence[str], *, require_thinking: bool = False) -> list[float]:
    """1.0 where `has_format` holds, else 0.0 (R1 §2.2.2: 'put its thinking process between <think> and </think>')."""
    return [1.0 if has_format(c, require_thinking) else 0.0 for c in _check_texts(completions)]


# --------------------------------------------------------------------------------------------- language consistency
# Toy scale: two "languages", told apart by script. English words are runs of ASCII letters; Chinese has no spaces,
# so each CJK ideograph is one token. Digits, symbols and punctuation belong to neither and are not counted.
_LANG_TOKEN = re.compile(r"[A-Za-z]+|[\u4e00-\u9fff\u3400-\u4dbf]")
LANGUAGES = ("en", "zh")


def _language_of(token: str) -> str:
    return "en" if token[0].isascii() else "zh"


def language_consistency(text: str, target: str = "en") -> float:
    """Share of the reasoning's language tokens that are in `target` (R1 §2.3.3: 'the proportion of target language
    words in the CoT'). The reasoning is the <think> block; without exactly one, the whole text is used.
    A reasoning with no language tokens at all (only digits and symbols) scores 1.0: nothing in it is mixed."""
    if target not in LANGUAGES:
        raise ValueError(f"target must be one of {LANGUAGES}, got {target!r}")
    reasoning = _between(text, THINK_OPEN, THINK_CLOSE)
    tokens = _LANG_TOKEN.findall(text if reasoning is None else reasoning)
    if not tokens:
        return 1.0
    return sum(_language_of(tok) == target for tok in tokens) / len(tokens)


def language_reward(completions: Sequence[str], target: str = "en") -> list[float]:
    """`language_consistency` for each completion."""
    return [language_consistency(c, target) for c in _check_texts(completions)]
