"""Reduce a cell's outputs to the text a learner reads, so two executions of a notebook can be compared.

Used by the determinism check: nbval's run (recorded by the root conftest.py into artifacts/nbval_outputs/) and the
browser's run (tests/e2e/test_browser.py) must print the same numbers. Things that legitimately differ between two
runs are masked, and nothing else:
- wall-clock times: on a line that states a duration (`12.3 ms`, `4 s`, `00:03`), a rate (`405 tokens/s`, `it/s`)
  or a measured speed comparison (`speed-up`, `faster`, `slower`), every number is masked, and so is the padding
  between them. So a notebook prints a measured time with its unit, or a measured ratio next to those words;
- the widget library's version in the environment report (the browser run uses the Colab-like ipywidgets 7);
- memory addresses (`0x7f...`).
Only numbers are masked, never words: a line whose words change with a measured time ("1.3x faster" in one run,
"0.8x slower" in the other; "goal: met" / "NOT met") still differs, and timing_word_changes names it as such. A line
that states a timing and judges it in words ("speed-up 1.35x: goal met") is a verdict on wall time even when both
runs agree: timing_verdicts finds it in one run's text.
Cells that call course_lib.kit.widgets.interactive are compared only for errors: nbval draws their static previews,
the browser the live controls. Other widgets (tqdm's progress bars) are left out of the text, the cell's prints stay. The result of a cell whose last line ends with `;` is dropped: JupyterLab hides it as IPython promises,
but nbval's kernels still send it.
"""
from __future__ import annotations

import difflib
import re

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
_DURATION = re.compile(r"\d\s*(ms|s|sec|secs|seconds?|min|minutes?|µs|us|ns|h)\b|\d+:\d\d\b|\w/s\b|s/it\b"
                       r"|speed-?ups?\b|\bfaster\b|\bslower\b", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)*(?:e[-+]?\d+)?", re.IGNORECASE)
_ADDRESS = re.compile(r"0x[0-9a-f]{6,}", re.IGNORECASE)
# Words that judge a measurement. On a line that states a timing they turn wall time into a sentence.
_VERDICT = re.compile(r"\bgoals?\b|\bmet\b|:\s*(yes|no)\b|\bachieved\b|\breached\b|\bmissed\b|✓|✗|"
                      r"已达到|未达到|达标|目标", re.IGNORECASE)


def _after_carriage_returns(text: str) -> str:
    """What a terminal shows: on each line only the text after the last carriage return (progress bars)."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n"))


def mask(text: str) -> str:
    lines = []
    for line in _after_carriage_returns(text).split("\n"):
        line = _ADDRESS.sub("0x…", line)
        if "ipywidgets" in line:
            line = "<widget library version masked>"
        elif _DURATION.search(line):
            line = re.sub(r"\s+", " ", _NUMBER.sub("#", line))   # padding follows the numbers' widths
        lines.append(line.rstrip())
    return "\n".join(lines).strip("\n")


def states_timing(line: str) -> bool:
    """A line that states a duration, a rate or a measured speed comparison, before or after masking."""
    return bool(_DURATION.search(line.replace("#", "0")))


def timing_verdicts(text: str) -> list[str]:
    """The lines of one run's printed text that state a timing and judge it in words ("1.4x: goal met")."""
    return [line.strip() for line in _after_carriage_returns(text).split("\n")
            if states_timing(line) and _VERDICT.search(_DURATION.sub(" ", line))]


def timing_word_changes(first: str, second: str) -> list[str]:
    """Lines of two masked texts (cell_text) that state a timing and still differ: their numbers are masked, so
    what differs are words, and words that change with a measured time are a verdict on the machine's speed."""
    a, b = first.split("\n"), second.split("\n")
    changes = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "replace":
            continue
        for x, y in zip(a[i1:i2], b[j1:j2]):
            if states_timing(x) or states_timing(y):
                changes.append(f"a line stating a timing has other words in each run (text chosen by a wall-clock "
                               f"measurement; print the number with its unit only):\n  first:  {x.strip()}\n"
                               f"  second: {y.strip()}")
    return changes


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def draws_widget(cell_source: str) -> bool:
    """A cell that shows a course widget (static previews under nbval, live controls in the browser)."""
    return "interactive(" in cell_source


def shown(source: str, outputs: list[dict]) -> list[dict]:
    """The outputs a learner sees: without the execute_result of a cell whose last line ends with ';'."""
    lines = [l for l in source.rstrip().splitlines() if l.strip() and not l.lstrip().startswith("#")]
    quiet = bool(lines) and lines[-1].split("#")[0].rstrip().endswith(";")
    return [o for o in outputs if not (quiet and o.get("output_type") == "execute_result")]


def cell_text(source: str, outputs: list[dict]) -> str:
    """stdout, results and errors of one cell, masked; stderr (warnings, progress bars) and pictures left out."""
    parts = []
    for o in shown(source, outputs):
        kind = o.get("output_type")
        if kind == "stream" and o.get("name") == "stdout":
            parts.append(_text(o.get("text", "")))
        elif kind == "error":
            parts.append(f"ERROR {o.get('ename')}: {o.get('evalue')}")
        elif kind in ("execute_result", "display_data"):
            data = o.get("data", {})
            if WIDGET_MIME in data or any(m.startswith("image/") for m in data):
                continue              # a picture (counted separately) or a widget; its text/plain is only a repr
            if "text/plain" in data:
                parts.append(_text(data["text/plain"]) + "\n")
    return mask("".join(parts))


def image_count(source: str, outputs: list[dict]) -> int:
    return sum(any(m.startswith("image/") for m in o.get("data", {})) for o in shown(source, outputs))


def errors(outputs: list[dict]) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}" for o in outputs if o.get("output_type") == "error"]
