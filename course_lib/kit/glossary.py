"""The English/中文 glossary (assets/glossary/glossary.csv), shown in 00 and, filtered, in later notebooks."""
from __future__ import annotations

import csv
import html

from course_lib import asset_path

COLUMNS = ["term_en", "term_zh", "definition", "notebook"]


def load() -> list[dict]:
    with open(asset_path("glossary", "glossary.csv"), encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise ValueError(f"glossary.csv columns must be {COLUMNS}, got {reader.fieldnames}")
        rows = list(reader)
    for i, row in enumerate(rows, start=2):
        if None in row:   # DictReader puts surplus fields under None: an unquoted comma
            raise ValueError(f"glossary.csv line {i}: more than {len(COLUMNS)} fields (quote a text that has a comma)")
        for col in COLUMNS:
            if not (row[col] or "").strip():
                raise ValueError(f"glossary.csv line {i}: column {col!r} is empty")
    return rows


def lookup(terms=None, notebook: str | int | None = None) -> list[dict]:
    """Rows for the given English terms (case-insensitive, prefix of the term is enough) and/or notebook number."""
    rows = load()
    if notebook is not None:
        nb = f"{int(notebook):02d}"
        rows = [r for r in rows if r["notebook"] == nb]
    if terms is not None:
        wanted = [t.lower() for t in ([terms] if isinstance(terms, str) else terms)]
        picked = []
        for t in wanted:
            match = [r for r in rows if r["term_en"].lower().startswith(t)]
            if not match:
                raise ValueError(f"term {t!r} is not in the glossary")
            picked.extend(m for m in match if m not in picked)
        rows = picked
    return rows


class Rows(list):
    """The rows show() displayed. Jupyter shows nothing more for them: a cell ending in `glossary.show()` (no ';')
    would otherwise print every row a second time, as a Python list under the table."""

    def _ipython_display_(self) -> None:
        pass


def show(terms=None, notebook: str | int | None = None) -> Rows:
    """Display the glossary (or a part) as a table: an HTML table in Jupyter, plain text elsewhere."""
    rows = Rows(lookup(terms, notebook))
    try:
        from IPython.display import HTML, display
    except ImportError:
        display = None
    if display is None:
        for r in rows:
            print(f"{r['term_en']} — {r['term_zh']}: {r['definition']}")
        return rows
    body = "".join(
        f"<tr><td>{html.escape(r['term_en'])}</td><td>{html.escape(r['term_zh'])}</td>"
        f"<td style='text-align:left'>{html.escape(r['definition'])}</td><td>{r['notebook']}</td></tr>" for r in rows)
    display(HTML("<table><thead><tr><th>English</th><th>中文</th><th style='text-align:left'>meaning</th>"
                 f"<th>notebook</th></tr></thead><tbody>{body}</tbody></table>"))
    return rows
