"""course_lib.kit.glossary: the bilingual glossary (assets/glossary/glossary.csv), its lookup and its display."""
import sys

import pytest

from course_lib.kit import glossary


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


def test_glossary_show_without_ipython_display_prints(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython.display", None)         # as if IPython were not installed
    rows = glossary.show(["reward"])
    assert rows and rows[0]["term_zh"] == "奖励"
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"{r['term_en']} — 奖励: {r['definition']}" for r in rows]
    assert len(printed) == len(rows)


def test_glossary_show_in_jupyter_displays_one_html_row_per_term(monkeypatch):
    display = pytest.importorskip("IPython.display")
    shown = []
    monkeypatch.setattr(display, "display", shown.append)
    rows = glossary.show(notebook=5)
    assert len(shown) == 1 and len(rows) > 0
    html = shown[0].data
    assert html.count("<tr><td>") == len(rows)
    assert "<th>English</th><th>中文</th>" in html
    assert all(r["term_zh"] in html and f"<td>{r['notebook']}</td>" in html for r in rows)
