"""The auto-checked exercise framework.

An exercise is a reference solution plus hidden cases. `checks.<name>(answer)` runs the learner's function (or compares
the learner's value) on every case against the reference and prints a friendly verdict: the first failing case with
input, expected and got. A wrong answer never raises; the learner's own exception is reported in one line.

Hints come on request, in tiers, and only after a first attempt: a failed check says how to ask, and
`checks.<name>.hint()` prints the next tier each time it is called (a nudge, then the formula, then code).

The verdict starts with a plain-text mark, PASS_MARK or FAIL_MARK: emoji such as U+2705 show as empty boxes in a
browser without an emoji font (Chromium on a plain Debian machine has only DejaVu / Liberation). `unsafe_chars`
says which characters of a text fall outside FONT_SAFE, the set that common fonts (DejaVu Sans and Sans Mono,
Liberation Sans / Arial, Noto Sans) all draw; tests/course/test_checks.py holds every printed message to it.
"""
from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

REGISTRY: dict[str, "Exercise"] = {}

PASS_MARK = "[correct]"
FAIL_MARK = "[not yet]"

# Characters every common font has: Latin-1, basic Greek and the punctuation, arrows and maths signs of the WGL4
# set that Arial, Liberation Sans, DejaVu Sans and Noto Sans all cover. CJK ideographs and punctuation are allowed
# too (the glossary and the language-consistency examples print Chinese; they need a CJK font in any case).
FONT_SAFE = frozenset(
    "\t\n" + "".join(map(chr, range(0x20, 0x7F))) + "".join(map(chr, range(0xA0, 0x100)))
    + "".join(chr(c) for c in range(0x391, 0x3CA) if c != 0x3A2)
    + "\u2013\u2014\u2018\u2019\u201a\u201c\u201d\u201e\u2020\u2021\u2022\u2026\u2030\u2032\u2033\u2039\u203a"
    + "\u2190\u2191\u2192\u2193\u2194\u2195"
    + "\u2202\u2206\u220f\u2211\u2212\u221a\u221e\u2229\u2248\u2260\u2261\u2264\u2265")
_CJK_RANGES = ((0x3000, 0x303F), (0x4E00, 0x9FFF), (0xFF00, 0xFFEF))


def unsafe_chars(text: str) -> list[str]:
    """The characters of `text` that a browser with only common fonts may draw as an empty box (sorted, unique)."""
    return sorted({ch for ch in text if ch not in FONT_SAFE
                   and not any(lo <= ord(ch) <= hi for lo, hi in _CJK_RANGES)})


@dataclass
class CheckResult:
    name: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:  # the notebook prints the message itself; keep the repr short
        return f"CheckResult({self.name!r}, passed={self.passed})"

    def _ipython_display_(self) -> None:
        """Jupyter shows nothing for a check's result: the check has printed its message already, and a cell that
        ends with `checks.name(answer)` (no ';') would otherwise add a line of Python under it."""


def _short(x: Any, limit: int = 300) -> str:
    if isinstance(x, torch.Tensor):
        text = f"tensor{tuple(x.shape)} {x.dtype}: " + np.array2string(
            x.detach().cpu().double().numpy(), precision=4, threshold=20, edgeitems=3)
    elif isinstance(x, np.ndarray):
        text = f"array{x.shape}: " + np.array2string(x, precision=4, threshold=20, edgeitems=3)
    elif isinstance(x, float):
        text = f"{x:.6g}"
    else:
        text = repr(x)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " …"


def close(expected: Any, got: Any, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """Default comparison: numbers and tensors with a tolerance, containers element-wise, everything else with ==."""
    if isinstance(expected, torch.Tensor) or isinstance(expected, np.ndarray):
        try:
            got_t = torch.as_tensor(got).detach().cpu().double()
        except Exception:
            return False
        exp_t = torch.as_tensor(expected).detach().cpu().double()
        return got_t.shape == exp_t.shape and bool(torch.allclose(got_t, exp_t, rtol=rtol, atol=atol, equal_nan=True))
    if isinstance(expected, bool):
        return isinstance(got, (bool, np.bool_)) and bool(got) == expected
    if expected is None or isinstance(expected, str):
        return got == expected
    if isinstance(expected, (int, float)):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, np.generic):
            got = got.item()
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            return False
        return math.isclose(float(got), float(expected), rel_tol=rtol, abs_tol=atol)
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple, torch.Tensor, np.ndarray)) or len(got) != len(expected):
            return False
        return all(close(e, g, rtol, atol) for e, g in zip(expected, got))
    if isinstance(expected, dict):
        return isinstance(got, dict) and got.keys() == expected.keys() and all(
            close(expected[k], got[k], rtol, atol) for k in expected)
    return got == expected


def _clone(args):
    """Fresh copies of the case inputs, so a learner's in-place edit cannot change the reference's inputs."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


@dataclass
class Exercise:
    name: str
    reference: Callable
    kind: str = "function"                      # "function": the learner passes a function; "value": a value
    cases: list = field(default_factory=list)   # argument tuples (function exercises)
    hints: tuple = ()                           # tiers, printed one per .hint() call: a nudge, the formula, code
    wrong: list = field(default_factory=list)   # plausible wrong answers; a test proves each one fails
    compare: Callable = close
    shown: int = 0                              # hint tiers printed so far
    module: str = "checks"                      # how a notebook reaches it: checks.<name>

    def hint(self) -> None:
        """Print the next hint tier (a nudge, then the formula, then code); after the last, print it again."""
        if not self.hints:
            print(f"{self.name}: no hint for this one: reread the cell above the exercise.")
            return
        i = min(self.shown, len(self.hints) - 1)
        self.shown = i + 1
        more = " (call .hint() again for the next one)" if i + 1 < len(self.hints) else ""
        print(f"Hint {i + 1} of {len(self.hints)} for {self.name}{more}:\n   {self.hints[i]}")

    def check(self, answer: Any, quiet: bool = False) -> CheckResult:
        result = self._run(answer)
        if not quiet:
            print(result.message)
        return result

    __call__ = check

    def _fail(self, text: str, attempted: bool = True) -> CheckResult:
        tiers = f" ({len(self.hints)} in all, one per call)" if len(self.hints) > 1 else ""
        ask = f"\n   Stuck? {self.module}.{self.name}.hint() prints a hint{tiers}." if attempted and self.hints else ""
        return CheckResult(self.name, False, f"{FAIL_MARK} {self.name}: {text}{ask}")

    def _run(self, answer: Any) -> CheckResult:
        if answer is None or answer is Ellipsis:
            return self._fail("no answer yet — replace the ... / None with your answer and run the cell again.",
                              attempted=False)
        if self.kind == "value":
            expected = self.reference()
            if callable(answer) and not callable(expected):
                return self._fail("expected a value, got a function — call it and pass the result.")
            if not self.compare(expected, answer):
                return self._fail(f"got {_short(answer)}, which is not right.")
            return CheckResult(self.name, True, f"{PASS_MARK} {self.name}: correct!")
        if not callable(answer):
            return self._fail(f"expected a function, got {type(answer).__name__} ({_short(answer, 80)}).")
        for i, args in enumerate(self.cases, 1):
            args = args if isinstance(args, tuple) else (args,)
            expected = self.reference(*_clone(args))
            try:
                got = answer(*_clone(args))
            except Exception as exc:  # the learner's bug: one line, pointing at their code
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                where = f" (line {frame.lineno} of {frame.name})" if frame else ""
                return self._fail(f"case {i} of {len(self.cases)} raised {type(exc).__name__}: {exc}{where}\n"
                                  f"   input:    {_short(args)}")
            if got is None and expected is not None:
                return self._fail(f"your function returned None on case {i} — not written yet, or a missing `return`?",
                                  attempted=False)
            if not self.compare(expected, got):
                return self._fail(f"case {i} of {len(self.cases)} differs.\n   input:    {_short(args)}\n"
                                  f"   expected: {_short(expected)}\n   got:      {_short(got)}")
        return CheckResult(self.name, True, f"{PASS_MARK} {self.name}: all {len(self.cases)} cases pass!")


def register(kind: str = "function", cases=None, hint: str | tuple | list = "", wrong=None,
             compare: Callable | None = None, name: str | None = None):
    """Decorator: the decorated function is the reference solution of a new exercise named after it.

    hint: one hint, or a sequence of tiers given one per `.hint()` call (a nudge, then the formula, then code)."""
    if kind not in ("function", "value"):
        raise ValueError(f"kind must be 'function' or 'value', got {kind!r}")

    def deco(reference: Callable) -> Exercise:
        ex_name = name or reference.__name__
        if ex_name in REGISTRY:
            raise ValueError(f"exercise {ex_name!r} is registered twice")
        if kind == "function" and not cases:
            raise ValueError(f"exercise {ex_name!r}: a function exercise needs cases")
        hints = (hint,) if isinstance(hint, str) else tuple(hint)
        ex = Exercise(ex_name, reference, kind, list(cases or []), tuple(h for h in hints if h), list(wrong or []),
                      compare or close)
        REGISTRY[ex_name] = ex
        return ex

    return deco
