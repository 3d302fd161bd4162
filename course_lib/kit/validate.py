"""Argument checks shared by the package: each returns the value it accepts and raises a one-line ValueError that
names the parameter and shows what it got, so a bad setting fails where it is passed, not deep inside a forward.

    positive_int("n_heads", n_heads)            -> "n_heads must be a positive int, got 0"
    non_negative_int("start_pos", start_pos)    -> "start_pos must be a non-negative int, got -1"
    int_at_least("max_ngram", n, 2)             -> "max_ngram must be an int >= 2, got 1"
    positive_number("norm_eps", eps)            -> "norm_eps must be a positive number, got 0.0"
    in_unit_interval("alpha", alpha)            -> "alpha must be in [0, 1], got 1.5"    ((0, 1] with include_zero=False)
    one_of("path", path, ("naive", "absorbed")) -> "path must be one of ('naive', 'absorbed'), got 'fast'"
    tensor_shape("x", x, ("batch", "time", 64)) -> "x must have shape (batch, time, 64), got (2, 3)"

bool is not accepted where an int or a number is asked for (True is an int to Python, never a size here).
"""
from __future__ import annotations

import numbers
from typing import Collection, Sequence

import torch


def _is_int(value) -> bool:
    """Any integer type (Python's int, numpy's int64, ...) but bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(name: str, value) -> int:
    """value if it is an int >= 1."""
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def non_negative_int(name: str, value) -> int:
    """value if it is an int >= 0."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def int_at_least(name: str, value, low: int, why: str = "") -> int:
    """value if it is an int >= low; `why` is appended to the bound in the message, e.g. " (bigrams and up)"."""
    if not _is_int(value) or value < low:
        raise ValueError(f"{name} must be an int >= {low}{why}, got {value!r}")
    return value


def positive_number(name: str, value, allow_none: bool = False):
    """value if it is an int or float > 0 (or None when allow_none)."""
    if value is None and allow_none:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number{' or None' if allow_none else ''}, got {value!r}")
    return value


def in_unit_interval(name: str, value, include_zero: bool = True):
    """value if it lies in [0, 1] (a probability, a share, a weight), or in (0, 1] with include_zero=False."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        0 <= value <= 1 if include_zero else 0 < value <= 1)
    if not ok:
        raise ValueError(f"{name} must be in {'[' if include_zero else '('}0, 1], got {value!r}")
    return value


def one_of(name: str, value, choices: Collection):
    """value if it is one of `choices` (shown as given: pass a tuple, or sorted(dict) for a dict's keys)."""
    try:
        ok = value in choices
    except TypeError:                      # an unhashable value asked of a dict or set
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def tensor_shape(name: str, x, shape: Sequence) -> torch.Tensor:
    """x if it is a tensor of len(shape) dims whose sizes match the int entries of `shape`; str entries (e.g.
    "batch") match any size and name the axis in the message."""
    if (not isinstance(x, torch.Tensor) or x.dim() != len(shape)
            or any(_is_int(want) and got != want for got, want in zip(x.shape, shape))):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must have shape ({', '.join(str(s) for s in shape)}), got {got}")
    return x
