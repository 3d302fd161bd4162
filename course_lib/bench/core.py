"""Timing helpers shared by the benchmarks."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import torch


def time_fn(fn: Callable[[], object], repeat: int = 7, warmup: int = 2, min_time: float = 0.0) -> float:
    """Median wall time of fn() in seconds over `repeat` runs after `warmup` runs (synchronising CUDA)."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compare(fns: dict[str, Callable[[], object]], baseline: str | None = None, rewarm: int = 0,
            **timing) -> dict[str, float]:
    """Time each function in turn, interleaved round by round so drifting machine load hits all of them alike.

    rewarm: untimed calls right before each timed one. For functions of a millisecond or less this matters:
    without it each one starts with the caches the previous function left (other weights), so the order of the
    functions changes the result."""
    names = list(fns)
    baseline = baseline or names[0]
    if baseline not in fns:
        raise ValueError(f"baseline {baseline!r} is not one of {names}")
    if rewarm < 0:
        raise ValueError(f"rewarm must be >= 0, got {rewarm}")
    repeat = timing.pop("repeat", 7)
    rounds = {n: [] for n in names}
    for name in names:
        time_fn(fns[name], repeat=1, warmup=timing.get("warmup", 2))
    for _ in range(repeat):
        for name in names:
            rounds[name].append(time_fn(fns[name], repeat=1, warmup=rewarm))
    return {name: statistics.median(ts) for name, ts in rounds.items()}


def print_table(rows: Sequence[Sequence], headers: Sequence[str]) -> str:
    """Print a plain-text table (and return it) with right-aligned numbers."""
    cells = [[h for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for j, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if j else c.ljust(w) for c, w in zip(row, widths)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    print(text)
    return text


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:.4g}"
    return str(c)


def parse_contexts(text: str, multiple: int = 1) -> list[int]:
    """`--contexts 1024,2048` -> [1024, 2048]; each a positive multiple of `multiple`, else a one-line exit."""
    try:
        contexts = [int(c) for c in text.split(",")]
    except ValueError:
        raise SystemExit(f"--contexts must be comma-separated ints, got {text!r}")
    if any(c <= 0 or c % multiple for c in contexts):
        kind = "positive" if multiple == 1 else f"positive multiples of {multiple}"
        raise SystemExit(f"--contexts must be {kind}, got {text!r}")
    return contexts
