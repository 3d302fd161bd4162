"""course_lib.bench.core: the timing helpers every benchmark uses, and `python -m course_lib.bench`.

The timings are checked on a scripted clock (each call of the timed function advances it by a known amount), so the
medians and the warm-up rules are exact, not "some time >= 0".
"""
import subprocess
import sys

import pytest

from course_lib.bench import core as bench_core


class ScriptedClock:
    """perf_counter for bench_core: a function made by `work(seconds...)` advances it by the next amount."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def work(self, *seconds):
        durations = iter(seconds)

        def fn():
            self.now += next(durations)
        return fn


@pytest.fixture
def clock(monkeypatch):
    c = ScriptedClock()
    monkeypatch.setattr(bench_core.time, "perf_counter", c)
    return c


def test_time_fn_is_the_median_after_untimed_warmup_calls(clock):
    # warm-up 100 s (not timed), then 3, 1, 2 s: median 2
    assert bench_core.time_fn(clock.work(100.0, 3.0, 1.0, 2.0), repeat=3, warmup=1) == 2.0
    assert bench_core.time_fn(clock.work(5.0, 7.0), repeat=2, warmup=0) == 6.0       # even count: mean of the middle
    with pytest.raises(ValueError, match="repeat"):
        bench_core.time_fn(lambda: None, repeat=0)


def test_compare_gives_each_function_its_median_interleaved(clock):
    order = []

    def timed(name, seconds):
        it = iter(seconds)

        def fn():
            order.append(name)
            clock.now += next(it)
        return fn

    # warm-up pass: 2 untimed + 1 timed call each; then 3 rounds a, b, a, b, a, b
    a = timed("a", [9, 9, 9, 1.0, 4.0, 2.0])
    b = timed("b", [9, 9, 9, 10.0, 30.0, 20.0])
    assert bench_core.compare({"a": a, "b": b}, repeat=3) == {"a": 2.0, "b": 20.0}
    assert order == ["a"] * 3 + ["b"] * 3 + ["a", "b"] * 3


def test_compare_rewarm_and_bad_options():
    calls = []
    bench_core.compare({"a": lambda: calls.append(1)}, repeat=4, warmup=1, rewarm=2)
    assert len(calls) == (1 + 1) + 4 * (2 + 1)          # warm-up pass (1 untimed + 1 timed), then 4 rounds
    with pytest.raises(ValueError, match="baseline"):
        bench_core.compare({"a": lambda: None}, baseline="z")
    with pytest.raises(ValueError, match="rewarm"):
        bench_core.compare({"a": lambda: None}, rewarm=-1)


def test_print_table_aligns_and_rounds(capsys):
    text = bench_core.print_table([["x", 1.23456], ["longer", 10]], ["name", "value"])
    # headers left-aligned; every body cell right-aligned to its column's widest entry; floats to 4 digits
    assert text.splitlines() == ["name    value",
                                 "------  -----",
                                 "     x  1.235",
                                 "longer     10"]
    assert capsys.readouterr().out == text + "\n"


def test_parse_contexts():
    assert bench_core.parse_contexts("1024,2048") == [1024, 2048]
    with pytest.raises(SystemExit, match="comma-separated ints"):
        bench_core.parse_contexts("1k")
    with pytest.raises(SystemExit, match="positive multiples of 64"):
        bench_core.parse_contexts("64,100", multiple=64)


def test_bench_cli_lists_and_rejects():
    out = subprocess.run([sys.executable, "-m", "course_lib.bench"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "course_lib.bench", "no_such_bench"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown benchmark" in bad.stderr
