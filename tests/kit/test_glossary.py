import subprocess
import sys

import pytest

from course_lib.kit import glossary
from course_lib.bench import core as bench_core


def test_glossary_has_about_thirty_terms_with_chinese():
    rows = glossary.load()
    assert len(rows) >= 30
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in r["term_zh"]) for r in rows)
    assert {r["term_en"] for r in rows} >= {"mixture of experts (MoE)", "distillation", "multi-token prediction (MTP)"}


def test_glossary_rows_have_exactly_four_fields_and_a_notebook_number():
    for r in glossary.load():
        assert None not in r and r["notebook"].isdigit() and len(r["notebook"]) == 2, r


def test_glossary_rejects_an_unquoted_comma(tmp_path, monkeypatch):
    bad = tmp_path / "glossary"
    bad.mkdir()
    (bad / "glossary.csv").write_text("term_en,term_zh,definition,notebook\nx,叉,one, two,00\n", encoding="utf-8")
    monkeypatch.setattr(glossary, "asset_path", lambda *parts: tmp_path.joinpath(*parts))
    with pytest.raises(ValueError, match="line 2: more than 4 fields"):
        glossary.load()


def test_glossary_lookup_by_term_and_notebook():
    assert glossary.lookup("distill")[0]["term_zh"] == "蒸馏"
    assert all(r["notebook"] == "03" for r in glossary.lookup(notebook=3))
    with pytest.raises(ValueError, match="'banana'"):
        glossary.lookup("banana")


def test_glossary_show_without_ipython_display_prints(capsys):
    rows = glossary.show(["reward"])
    assert rows and rows[0]["term_zh"] == "奖励"


def test_bench_cli_lists_and_rejects():
    out = subprocess.run([sys.executable, "-m", "course_lib.bench"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "course_lib.bench", "no_such_bench"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown benchmark" in bad.stderr


def test_bench_timing_helpers(capsys):
    assert bench_core.time_fn(lambda: sum(range(100)), repeat=3, warmup=1) >= 0
    times = bench_core.compare({"a": lambda: None, "b": lambda: sum(range(1000))}, repeat=3)
    assert set(times) == {"a", "b"}
    with pytest.raises(ValueError, match="baseline"):
        bench_core.compare({"a": lambda: None}, baseline="z")
    # rewarm: each timed call is preceded by that many untimed ones
    calls = []
    bench_core.compare({"a": lambda: calls.append(1)}, repeat=4, warmup=1, rewarm=2)
    assert len(calls) == (1 + 1) + 4 * (2 + 1)          # warm-up pass (1 untimed + 1 timed), then 4 rounds
    with pytest.raises(ValueError, match="rewarm"):
        bench_core.compare({"a": lambda: None}, rewarm=-1)
    text = bench_core.print_table([["x", 1.23456]], ["name", "value"])
    assert "1.235" in text

