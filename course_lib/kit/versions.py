"""Which optional library versions the course's comparisons need, and a one-line reason when one is missing.

The `ref` extra in pyproject.toml pins ``transformers>=5.24``: the first release whose DeepseekV32 and DeepseekV4
modules (and DeepseekV3's cached decoding) our reference tests and notebook 10's export were checked against. Colab
and other preinstalled stacks often carry an older one; the comparisons then skip with this reason instead of
printing numbers that disagree.
"""
from __future__ import annotations

import importlib
import importlib.util
import re

MIN_TRANSFORMERS = "5.24"          # keep equal to the `ref` extra in pyproject.toml (tests/test_cuda_path.py checks)


def _release(version: str) -> tuple[int, ...]:
    """'5.24.0.dev0' -> (5, 24, 0): the leading numeric release, enough to compare against a minimum."""
    parts = []
    for piece in version.split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
        if m.group() != piece:
            break
    return tuple(parts)


def transformers_problem(minimum: str = MIN_TRANSFORMERS) -> str | None:
    """None when transformers >= minimum is installed, else a one-line reason such as
    'needs transformers >= 5.24 (found 5.17.0)' or 'needs transformers >= 5.24 (not installed)'."""
    if not _release(minimum):
        raise ValueError(f"minimum must be a version like '5.24', got {minimum!r}")
    if importlib.util.find_spec("transformers") is None:
        return f"needs transformers >= {minimum} (not installed)"
    found = importlib.import_module("transformers").__version__
    if _release(found) < _release(minimum):
        return f"needs transformers >= {minimum} (found {found})"
    return None
