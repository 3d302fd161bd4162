"""Tests of course_lib.timeline: the shipped data, each kind of broken row, filtering and the pure plots."""
import csv
import datetime as dt
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from course_lib import timeline as T

HEADER = list(T.RELEASE_COLUMNS)
GOOD = [
    ["2024-05-06", "DeepSeek-V2", "llm", "236", "21", "131072", "MLA", "arXiv:2405.04434", "02 03"],
    ["2023-11-02", "DeepSeek-Coder", "code", "33", "", "16384", "first release", "arXiv:2401.14196", ""],
    ["2024-05-06", "Same-Day-Second", "vision", "", "", "", "a same-day row", "github.com/x/y", ""],
]
TODAY = dt.date(2026, 11, 26)


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def releases_file(tmp_path, rows=None, header=None):
    return write_csv(tmp_path / "releases.csv", header or HEADER, GOOD if rows is None else rows)


def with_row(index, column, value):
    rows = [list(r) for r in GOOD]
    rows[index][HEADER.index(column)] = value
    return rows


# ---------------------------------------------------------------- the shipped data

def test_shipped_releases_load_and_cover_the_issue():
    rel = T.load_releases()
    assert len(rel) >= 25
    names = {r.name for r in rel}
    assert {"DeepSeek-Coder", "DeepSeek-V2", "DeepSeek-V2.5", "DeepSeek-V3", "DeepSeek-R1", "DeepSeek-V3.1",
            "DeepSeek-V3.2-Exp", "DeepSeek-OCR"} <= names
    assert sum(r.family == "distill" for r in rel) == 6           # the six R1-Distill students
    assert {"vision", "math", "prover", "reasoning"} <= {r.family for r in rel}
    assert [r.date for r in rel] == sorted(r.date for r in rel)
    assert rel[0].name == "DeepSeek-Coder"                           # DeepSeek's first release (Nov 2023)


def test_shipped_flagship_numbers_match_the_readmes():
    # Values typed from the official READMEs' parameter tables (V2, V3, R1), independently of the CSV.
    by = {r.name: r for r in T.load_releases()}
    assert (by["DeepSeek-V2"].total_params_b, by["DeepSeek-V2"].active_params_b) == (236, 21)
    for name in ("DeepSeek-V3", "DeepSeek-R1", "DeepSeek-R1-Zero"):
        assert (by[name].total_params_b, by[name].active_params_b, by[name].context_length) == (671, 37, 128 * 1024)
    assert by["DeepSeek-R1"].date == dt.date(2025, 1, 20)
    assert by["DeepSeek-V3"].date == dt.date(2024, 12, 26)


def test_shipped_corrections_of_issue_14():
    # DeepSeekMoE 16B: 2.8B of 16.4B activated (arXiv 2401.06066, section 5.1.2, Tables 3-4), typed from the paper.
    by = {r.name: r for r in T.load_releases()}
    moe = by["DeepSeekMoE"]
    assert (moe.total_params_b, moe.active_params_b) == (16.4, 2.8) and moe.is_moe
    # V2's 93.3% smaller KV cache needs MLA *and* FP8 deployment with 6-bit KV quantisation (V2 section 3.2.3).
    v2 = by["DeepSeek-V2"].introduced
    claim = next(c for c in T.load_claims() if "93.3%" in c.evidence).evidence
    for text in (v2, claim):
        assert "93.3%" in text and re.search(r"\b6[- ]bits?\b", text) and "FP8" in text and "MLA" in text


def test_shipped_timeline_reaches_past_the_v4_preview():
    rel = T.load_releases()
    names = [r.name for r in rel]
    assert names.index("DeepSeek-V4-Pro") < names.index("DeepSeek-V4.1-Flash")
    assert rel[-1].date > dt.date(2026, 4, 24)
    v41 = next(r for r in rel if r.name == "DeepSeek-V4.1-Flash")
    assert "Engram" in v41.introduced and "09" in v41.notebooks


def test_shipped_v4_rows_say_how_flash_and_pro_differ():
    # V4 report §4.2.1 and the official config.json files: the first two layers (compress_ratios) and the CSA top-k
    # differ, so the rows must not call Flash "the same architecture"
    rel = {r.name: r for r in T.load_releases()}
    flash, pro = rel["DeepSeek-V4-Flash"], rel["DeepSeek-V4-Pro"]
    assert "same architecture" not in flash.introduced
    assert "sliding-window only" in flash.introduced and "top-k 512" in flash.introduced
    assert "43 layers" in flash.introduced and "d = 4096" in flash.introduced
    assert "first 2 layers HCA" in pro.introduced and "top-k 1024" in pro.introduced
    assert "61 layers" in pro.introduced and "d = 7168" in pro.introduced
    assert (flash.total_params_b, flash.active_params_b, pro.total_params_b, pro.active_params_b) == (284, 13, 1600, 49)
    for r in (flash, pro):
        assert "§4.2.1" in r.source


def test_shipped_v4_official_checkpoints_both_carry_dspark():
    rel = {r.name: r for r in T.load_releases()}
    flash, pro = rel["DeepSeek-V4-Flash-0731"], rel["DeepSeek-V4-Pro-0813"]
    for r in (flash, pro):
        assert "DSpark speculative-decoding module" in r.introduced
    assert "three draft layers" in flash.introduced and "DeepSpec" in flash.source


def test_shipped_v41_row_says_what_is_new():
    v41 = next(r for r in T.load_releases() if r.name == "DeepSeek-V4.1-Flash")
    for phrase in ("encoder-decoder", "8B activated per prompt token", "16B per generated token", "CSA2",
                   "shared across layers", "order 4", "DSpark", "vision", "technical report"):
        assert phrase in v41.introduced, phrase
    assert (v41.total_params_b, v41.active_params_b, v41.context_length) == (552, 16, 1048576)
    assert "deepseek_v41" in v41.source


def test_shipped_notebook_links_name_real_or_planned_notebooks():
    root = Path(__file__).resolve().parent.parent / "notebooks"
    existing = {p.name[:2] for p in root.glob("[0-9][0-9]_*.ipynb")}
    linked = {n for r in T.load_releases() for n in r.notebooks}
    assert linked, "no release links a notebook"
    missing = sorted(n for n in linked if n not in existing and n not in T.PLANNED_NOTEBOOKS)
    assert not missing, f"releases.csv links notebooks that neither exist nor are planned: {missing}"
    by = {r.name: r.notebooks for r in T.load_releases()}
    # What each release introduced, by the course's own map: MoE in 02, MLA in 03, MTP in 04, GRPO in 05, R1 in 06.
    assert by["DeepSeekMoE"] == ("02",) and by["DeepSeek-V2"] == ("02", "03") and by["DeepSeekMath"] == ("05",)
    assert "04" in by["DeepSeek-V3"] and by["DeepSeek-R1"] == ("05", "06")


def test_shipped_claims_load_and_cover_the_issue():
    claims = T.load_claims()
    assert len(claims) >= 10
    assert {c.verdict for c in claims} == set(T.VERDICTS)
    assert {c.post for c in claims} == {"post1", "post2"}
    gating = [c for c in claims if "动态门控" in c.claim_zh]
    assert gating and gating[0].verdict == "false"                  # R1 has V3's architecture
    assert any(c.see_notebook == "02_moe_routing" and "专家" in c.claim_zh for c in claims)


# ---------------------------------------------------------------- a valid file

def test_valid_file_loads_sorted_with_stable_ties(tmp_path):
    rel = T.load_releases(releases_file(tmp_path), today=TODAY)
    assert [r.name for r in rel] == ["DeepSeek-Coder", "DeepSeek-V2", "Same-Day-Second"]
    v2 = rel[1]
    assert v2.date == dt.date(2024, 5, 6) and v2.context_length == 131072
    assert v2.is_moe and v2.activation_ratio == pytest.approx(21 / 236)
    assert rel[0].activation_ratio is None and not rel[0].is_moe
    assert rel[2].total_params_b is None and rel[2].context_length is None
    assert v2.notebooks == ("02", "03") and rel[0].notebooks == ()


def test_as_records_gives_plain_dicts(tmp_path):
    recs = T.as_records(T.load_releases(releases_file(tmp_path), today=TODAY))
    assert recs[1]["date"] == "2024-05-06" and recs[1]["total_params_b"] == 236.0
    assert recs[1]["notebooks"] == ["02", "03"]
    assert set(recs[0]) == set(T.RELEASE_COLUMNS)


def test_blank_lines_are_ignored(tmp_path):
    path = releases_file(tmp_path)
    path.write_text(path.read_text() + "\n\n", encoding="utf-8")
    assert len(T.load_releases(path, today=TODAY)) == 3


# ---------------------------------------------------------------- each kind of broken file or row

@pytest.mark.parametrize("index, column, value, message", [
    (0, "date", "2024/05/06", r"row 1 \(DeepSeek-V2\), column 'date'.*YYYY-MM-DD"),
    (0, "date", "2024-02-30", r"row 1 .*column 'date'.*not a real calendar date"),
    (1, "date", "2027-01-01", r"row 2 .*column 'date'.*in the future"),
    (0, "name", "", r"row 1, column 'name'.*empty"),
    (2, "name", "DeepSeek-V2", r"row 3 \(DeepSeek-V2\), column 'name'.*duplicate.*row 1"),
    (0, "family", "chat", r"row 1 .*column 'family'.*not one of"),
    (0, "total_params_b", "236B", r"row 1 .*column 'total_params_b'.*not a number"),
    (0, "total_params_b", "-5", r"row 1 .*column 'total_params_b'.*positive"),
    (0, "active_params_b", "300", r"row 1 .*column 'active_params_b'.*more than the 236B total"),
    (0, "context_length", "128K", r"row 1 .*column 'context_length'.*whole number"),
    (1, "source", "", r"row 2 \(DeepSeek-Coder\), column 'source'.*empty"),
    (1, "introduced", "", r"row 2 .*column 'introduced'.*empty"),
    (0, "notebooks", "2 3", r"row 1 .*column 'notebooks'.*two-digit"),
    (0, "notebooks", "02,03", r"row 1 .*column 'notebooks'.*two-digit"),
    (0, "notebooks", "03 02", r"row 1 .*column 'notebooks'.*ascending"),
    (0, "notebooks", "02 02", r"row 1 .*column 'notebooks'.*ascending"),
])
def test_broken_release_row_names_row_and_column(tmp_path, index, column, value, message):
    path = releases_file(tmp_path, with_row(index, column, value))
    with pytest.raises(ValueError, match=message):
        T.load_releases(path, today=TODAY)


def test_future_is_relative_to_today(tmp_path):
    path = releases_file(tmp_path, with_row(1, "date", "2026-11-27"))
    with pytest.raises(ValueError, match="in the future"):
        T.load_releases(path, today=TODAY)
    assert len(T.load_releases(path, today=dt.date(2026, 11, 27))) == 3


def test_wrong_header_is_reported(tmp_path):
    header = [h if h != "source" else "url" for h in HEADER]
    with pytest.raises(ValueError, match=r"releases.csv: header .*missing \['source'\].*unexpected \['url'\]"):
        T.load_releases(releases_file(tmp_path, header=header), today=TODAY)


def test_row_with_extra_field_is_reported(tmp_path):
    rows = [list(r) for r in GOOD]
    rows[1] = rows[1] + ["stray"]
    with pytest.raises(ValueError, match=r"row 2: has 10 fields, expected 9"):
        T.load_releases(releases_file(tmp_path, rows), today=TODAY)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="file is empty"):
        T.load_releases(tmp_path / "empty.csv", today=TODAY)
    with pytest.raises(ValueError, match="no data rows"):
        T.load_releases(releases_file(tmp_path, rows=[]), today=TODAY)
    with pytest.raises(ValueError, match="not found"):
        T.load_releases(tmp_path / "nope.csv")


# ---------------------------------------------------------------- claims

CLAIM_GOOD = [
    ["1", "post1", "中文", "English", "true", "evidence", "arXiv:1", ""],
    ["2", "post2", "中文二", "English 2", "garbled", "evidence", "arXiv:2", "02_moe_routing"],
]


@pytest.mark.parametrize("index, column, value, message", [
    (1, "id", "1", r"row 2, column 'id'.*duplicate id 1"),
    (0, "id", "x", r"row 1, column 'id'.*whole number"),
    (0, "verdict", "partly", r"row 1, column 'verdict'.*not one of"),
    (0, "post", "post3", r"row 1, column 'post'"),
    (1, "source", "", r"row 2, column 'source'.*empty"),
    (0, "claim_en", "", r"row 1, column 'claim_en'.*empty"),
    (1, "see_notebook", "notebook two", r"row 2, column 'see_notebook'"),
])
def test_broken_claim_row_names_row_and_column(tmp_path, index, column, value, message):
    rows = [list(r) for r in CLAIM_GOOD]
    rows[index][T.CLAIM_COLUMNS.index(column)] = value
    path = write_csv(tmp_path / "claims.csv", T.CLAIM_COLUMNS, rows)
    with pytest.raises(ValueError, match=message):
        T.load_claims(path)


def test_valid_claims_file(tmp_path):
    claims = T.load_claims(write_csv(tmp_path / "claims.csv", T.CLAIM_COLUMNS, CLAIM_GOOD))
    assert [c.id for c in claims] == [1, 2]
    assert claims[0].see_notebook is None and claims[1].see_notebook == "02_moe_routing"


# ---------------------------------------------------------------- filtering and plots

def test_filter_releases(tmp_path):
    rel = T.load_releases(releases_file(tmp_path), today=TODAY)
    assert [r.name for r in T.filter_releases(rel, "llm")] == ["DeepSeek-V2"]
    assert [r.name for r in T.filter_releases(rel, start_year=2024)] == ["DeepSeek-V2", "Same-Day-Second"]
    assert [r.name for r in T.filter_releases(rel, end_year=2023)] == ["DeepSeek-Coder"]
    with pytest.raises(ValueError, match="family"):
        T.filter_releases(rel, "chat")
    with pytest.raises(ValueError, match="start_year 2025 is after end_year 2024"):
        T.filter_releases(rel, start_year=2025, end_year=2024)


def _points(ax):
    return sum(len(c.get_offsets()) for c in ax.collections)


def test_plot_timeline_draws_one_dot_per_release_in_family_lanes():
    rel = T.load_releases()
    fig = T.plot_timeline(rel, family="all", start_year=2023, end_year=2026)
    ax = fig.axes[0]
    assert _points(ax) == len(rel)
    assert [t.get_text() for t in ax.get_yticklabels()] == [f for f in T.FAMILIES if any(r.family == f for r in rel)]
    plt.close(fig)
    fig = T.plot_timeline(rel, family="distill", start_year=2025, end_year=2025, label_all=True)
    assert _points(fig.axes[0]) == 6 and len(fig.axes[0].texts) == 6
    plt.close(fig)


def test_plot_timeline_rejects_an_empty_selection():
    with pytest.raises(ValueError, match="no releases"):
        T.plot_timeline(T.load_releases(), family="ocr", start_year=2023, end_year=2024)
    with pytest.raises(ValueError, match="after end_year"):
        T.plot_timeline(T.load_releases(), start_year=2026, end_year=2023)


def test_plot_params_draws_total_and_active(tmp_path):
    rel = T.load_releases(releases_file(tmp_path), today=TODAY)
    fig = T.plot_params(rel)
    ax = fig.axes[0]
    # Coder: one dense dot; V2: a total and an activated dot joined by a line; the size-less row is skipped.
    assert _points(ax) == 3 and len(ax.lines) == 1
    assert sorted(ax.lines[0].get_ydata()) == [21, 236]
    assert ax.get_yscale() == "log"
    plt.close(fig)
    with pytest.raises(ValueError, match="parameter count"):
        T.plot_params([r for r in rel if r.total_params_b is None])
