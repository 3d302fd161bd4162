"""Every notebook opens with a short Chinese section (中文导读) for readers of the Chinese posts the course grew from.

Convention (checked here): the markdown cell right after the title cell starts with `## 中文导读` and has three
labelled items, `**你将构建：**` (what you will build), `**核心概念：**` (key ideas) and `**预计运行时间：**`
(expected runtime, in seconds, the same number as the title cell's English "Expected runtime"). Apart from these
labels, bold text in the section marks technical terms, and every bold Chinese term must be one of the glossary's
Chinese terms (assets/glossary/glossary.csv, column term_zh), so a learner can look it up. Ordinary Chinese words
stay unmarked and are not checked.

Solutions notebooks need no such section: they point back to their notebook, which has it.
"""
import csv
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAIN = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
GLOSSARY = ROOT / "assets" / "glossary" / "glossary.csv"
LABELS = ("你将构建：", "核心概念：", "预计运行时间：")
CJK = re.compile(r"[\u3400-\u9fff]")


def glossary_terms() -> set[str]:
    """Chinese terms of the glossary; "词元 (令牌)" gives 词元, 令牌 and the whole string."""
    terms = set()
    with GLOSSARY.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            zh = row["term_zh"].strip()
            terms.add(zh)
            terms.update(part.strip() for part in re.split(r"[()（）]", zh) if part.strip())
    return terms


def section(path: Path) -> tuple[str, str]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "".join(cells[0]["source"]), ("".join(cells[1]["source"]) if len(cells) > 1 else "")


def marked_terms(text: str) -> list[str]:
    return [t for t in re.findall(r"\*\*(.+?)\*\*", text) if t not in LABELS]


def test_there_are_notebooks():
    assert MAIN


def test_glossary_splits_variants():
    terms = glossary_terms()
    assert {"词元", "令牌", "词元 (令牌)", "混合专家"} <= terms


def test_marked_terms_convention():
    text = "**核心概念：** **混合专家**与**蒸馏**，普通词语不加粗。"
    assert marked_terms(text) == ["混合专家", "蒸馏"]


@pytest.mark.parametrize("path", MAIN, ids=[p.name for p in MAIN])
def test_notebook_opens_with_a_chinese_section(path):
    title, zh = section(path)
    assert zh.startswith("## 中文导读"), (
        f"{path.name}: the cell after the title must be the Chinese section starting with '## 中文导读'")
    for label in LABELS:
        assert f"**{label}**" in zh, f"{path.name}: the Chinese section lacks the item **{label}**"
    assert len(CJK.findall(zh)) >= 60, f"{path.name}: the Chinese section is too short to be useful"


@pytest.mark.parametrize("path", MAIN, ids=[p.name for p in MAIN])
def test_chinese_runtime_matches_the_title(path):
    title, zh = section(path)
    en = re.search(r"\*\*Expected runtime:\*\*\s*about\s+(\d+)\s*s", title)
    cn = re.search(r"\*\*预计运行时间：\*\*\s*约\s*(\d+)\s*秒", zh)
    assert en and cn, f"{path.name}: runtime missing (English 'about N s' in the title, Chinese '约 N 秒')"
    assert en.group(1) == cn.group(1), f"{path.name}: Chinese runtime {cn.group(1)} s, English {en.group(1)} s"


@pytest.mark.parametrize("path", MAIN, ids=[p.name for p in MAIN])
def test_chinese_terms_come_from_the_glossary(path):
    _, zh = section(path)
    terms = glossary_terms()
    marked = [t for t in marked_terms(zh) if CJK.search(t)]
    assert len(marked) >= 2, f"{path.name}: mark the section's technical terms in bold (glossary terms)"
    unknown = sorted({t for t in marked if t not in terms})
    assert not unknown, (f"{path.name}: bold terms not in the glossary's term_zh: {unknown} "
                         "(use the glossary's term, or propose a glossary row)")
