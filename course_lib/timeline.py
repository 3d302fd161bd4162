"""DeepSeek's public releases and the fact-checked claims of notebook 01: loading, validation and pure plots.

The data lives in `assets/timeline/` (sources and the list of unverified values in its README):
- `releases.csv`: one row per public release (date, name, family, total/active parameters, context, what was new, source,
  and the course notebooks that teach what it introduced);
- `claims.csv`: claims from the course's two Chinese source posts with a verdict, evidence and source.

The loaders check every row and stop at the first broken one with a `ValueError` that names the file, the row and the
column, so a typo in the CSV is found at once instead of turning into a wrong plot.
"""
from __future__ import annotations

import csv
import datetime as dt
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

RELEASE_COLUMNS = ("date", "name", "family", "total_params_b", "active_params_b", "context_length", "introduced",
                   "source", "notebooks")
CLAIM_COLUMNS = ("id", "post", "claim_zh", "claim_en", "verdict", "evidence", "source", "see_notebook")
FAMILIES = ("llm", "code", "math", "vision", "reasoning", "distill", "prover", "ocr")
VERDICTS = ("true", "false", "misleading", "garbled")
POSTS = ("post1", "post2")

# Releases whose new idea the course builds later; the timeline labels them (name -> short label).
MILESTONES = {
    "DeepSeek-Coder": "first release",
    "DeepSeekMoE": "fine-grained + shared experts",
    "DeepSeekMath": "GRPO",
    "DeepSeek-V2": "MLA",
    "DeepSeek-V3": "aux-loss-free balancing, MTP",
    "DeepSeek-R1": "RL-trained reasoning",
    "DeepSeek-V3.1": "hybrid thinking",
    "DeepSeek-V3.2-Exp": "sparse attention (DSA)",
    "DeepSeek-V4-Pro": "1M context",
    "DeepSeek-V4.1-Flash": "Engram memory",
}

# Course notebooks that the README's course map plans but that may not be written yet: `notebooks` may name them.
# A test checks that every other number names an existing notebooks/NN_*.ipynb.
PLANNED_NOTEBOOKS: tuple = ()


# MoE releases labelled on the parameter chart: name -> (horizontal offset in points, alignment).
PARAM_LABELS = {"DeepSeekMoE": (-6, "right"), "DeepSeek-V2": (-6, "right"), "DeepSeek-V2-Lite": (6, "left"),
                "DeepSeek-V3": (-6, "right"), "DeepSeek-V4-Pro": (-6, "right"), "DeepSeek-V4-Flash": (-6, "right"),
                "DeepSeek-V4.1-Flash": (-6, "right")}


@dataclass(frozen=True)
class Release:
    date: dt.date
    name: str
    family: str
    total_params_b: float | None     # billions; None = not published
    active_params_b: float | None    # billions activated per token; None = dense or not published
    context_length: int | None       # tokens; None = not published
    introduced: str
    source: str
    notebooks: tuple[str, ...] = ()  # two-digit course notebook numbers that teach what this release introduced

    @property
    def is_moe(self) -> bool:
        """A published activated count below the total means a sparse (Mixture-of-Experts) model."""
        return (self.total_params_b is not None and self.active_params_b is not None
                and self.active_params_b < self.total_params_b)

    @property
    def activation_ratio(self) -> float | None:
        """Share of the parameters that work on each token: active / total (None when either is unknown)."""
        if self.total_params_b is None or self.active_params_b is None:
            return None
        return self.active_params_b / self.total_params_b


@dataclass(frozen=True)
class Claim:
    id: int
    post: str
    claim_zh: str
    claim_en: str
    verdict: str
    evidence: str
    source: str
    see_notebook: str | None


def _default_path(filename: str) -> Path:
    from course_lib import asset_path

    return asset_path("timeline", filename)


def _read_rows(path: Path, columns: tuple[str, ...]) -> list[dict]:
    """CSV rows as dicts after checking the header and the number of fields in each row."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path.name}: file not found at {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path.name}: the file is empty; expected the header {','.join(columns)}")
        header = [h.strip() for h in header]
        if tuple(header) != columns:
            missing = [c for c in columns if c not in header]
            extra = [h for h in header if h not in columns]
            raise ValueError(f"{path.name}: header must be exactly {','.join(columns)}; "
                             f"missing {missing or 'none'}, unexpected {extra or 'none'}")
        rows = []
        for n, fields in enumerate(reader, start=1):
            if not any(x.strip() for x in fields):
                continue  # a blank line is harmless
            if len(fields) != len(columns):
                raise ValueError(f"{path.name} row {n}: has {len(fields)} fields, expected {len(columns)} "
                                 "(an unquoted comma inside a value?)")
            rows.append({"_row": n, **{c: x.strip() for c, x in zip(columns, fields)}})
    return rows


def _where(path: Path, row: dict, column: str) -> str:
    label = f" ({row['name']})" if row.get("name") else ""
    return f"{Path(path).name} row {row['_row']}{label}, column '{column}'"


def _number(path, row, column, integer=False):
    text = row[column]
    if text == "":
        return None
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ValueError(f"{_where(path, row, column)}: {text!r} is not {kind} (leave it empty if unknown)") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{_where(path, row, column)}: {text!r} must be positive")
    return value


def _required(path, row, column) -> str:
    if not row[column]:
        raise ValueError(f"{_where(path, row, column)}: is empty; every row needs one")
    return row[column]


def _notebook_numbers(path, row) -> tuple[str, ...]:
    """`notebooks`: empty, or two-digit notebook numbers separated by single spaces, ascending, without repeats."""
    text = row["notebooks"]
    if text == "":
        return ()
    if not re.fullmatch(r"\d\d( \d\d)*", text):
        raise ValueError(f"{_where(path, row, 'notebooks')}: {text!r} is not a list of two-digit notebook numbers "
                         "separated by spaces, like '02 03'")
    numbers = tuple(text.split(" "))
    if list(numbers) != sorted(set(numbers)):
        raise ValueError(f"{_where(path, row, 'notebooks')}: {text!r} must be ascending without repeats")
    return numbers


def load_releases(path: str | Path | None = None, today: dt.date | None = None) -> list[Release]:
    """Read and validate releases.csv; returns Release records sorted by date (file order breaks ties).

    Checks: exact header; a YYYY-MM-DD date that is not after `today`; a non-empty, unique name; a known family;
    positive numbers or empty cells; active <= total; non-empty `introduced` and `source`; `notebooks` empty or
    ascending two-digit numbers separated by spaces.
    """
    path = Path(path) if path is not None else _default_path("releases.csv")
    today = today or dt.date.today()
    releases, seen = [], {}
    for row in _read_rows(path, RELEASE_COLUMNS):
        name = _required(path, row, "name")
        if name in seen:
            raise ValueError(f"{_where(path, row, 'name')}: duplicate name, already used in row {seen[name]}")
        seen[name] = row["_row"]
        text = row["date"]
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError(f"{_where(path, row, 'date')}: {text!r} is not a YYYY-MM-DD date")
        try:
            date = dt.date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{_where(path, row, 'date')}: {text!r} is not a real calendar date") from None
        if date > today:
            raise ValueError(f"{_where(path, row, 'date')}: {text} is in the future (today is {today})")
        if row["family"] not in FAMILIES:
            raise ValueError(f"{_where(path, row, 'family')}: {row['family']!r} is not one of {', '.join(FAMILIES)}")
        total = _number(path, row, "total_params_b")
        active = _number(path, row, "active_params_b")
        if total is not None and active is not None and active > total:
            raise ValueError(f"{_where(path, row, 'active_params_b')}: {active:g}B activated is more than the "
                             f"{total:g}B total")
        releases.append(Release(date, name, row["family"], total, active,
                                _number(path, row, "context_length", integer=True),
                                _required(path, row, "introduced"), _required(path, row, "source"),
                                _notebook_numbers(path, row)))
    if not releases:
        raise ValueError(f"{path.name}: no data rows")
    return sorted(releases, key=lambda r: r.date)  # sorted() is stable: same-day rows keep their file order


def load_claims(path: str | Path | None = None) -> list[Claim]:
    """Read and validate claims.csv: unique positive ids, known post and verdict, every text field and source filled."""
    path = Path(path) if path is not None else _default_path("claims.csv")
    claims, seen = [], set()
    for row in _read_rows(path, CLAIM_COLUMNS):
        cid = _number(path, row, "id", integer=True)
        if cid is None:
            raise ValueError(f"{_where(path, row, 'id')}: is empty; every row needs one")
        if cid in seen:
            raise ValueError(f"{_where(path, row, 'id')}: duplicate id {cid}")
        seen.add(cid)
        if row["post"] not in POSTS:
            raise ValueError(f"{_where(path, row, 'post')}: {row['post']!r} is not one of {', '.join(POSTS)}")
        if row["verdict"] not in VERDICTS:
            raise ValueError(f"{_where(path, row, 'verdict')}: {row['verdict']!r} is not one of "
                             f"{', '.join(VERDICTS)}")
        nb = row["see_notebook"] or None
        if nb is not None and not re.fullmatch(r"\d\d_[a-z0-9_]+", nb):
            raise ValueError(f"{_where(path, row, 'see_notebook')}: {nb!r} is not a notebook name like 02_moe_routing")
        claims.append(Claim(cid, row["post"], *(_required(path, row, c) for c in
                                                 ("claim_zh", "claim_en", "verdict", "evidence", "source")), nb))
    if not claims:
        raise ValueError(f"{path.name}: no data rows")
    return claims


def as_records(items) -> list[dict]:
    """Releases or claims as plain dicts (dates as ISO strings), e.g. for a table or an exercise."""
    out = []
    for item in items:
        d = asdict(item)
        if isinstance(d.get("date"), dt.date):
            d["date"] = d["date"].isoformat()
        if isinstance(d.get("notebooks"), tuple):
            d["notebooks"] = list(d["notebooks"])
        out.append(d)
    return out


def filter_releases(releases, family: str = "all", start_year: int | None = None,
                    end_year: int | None = None) -> list[Release]:
    """Releases of one family ('all' for every family) whose year lies in [start_year, end_year]."""
    if family != "all" and family not in FAMILIES:
        raise ValueError(f"family must be 'all' or one of {', '.join(FAMILIES)}, got {family!r}")
    if start_year is not None and end_year is not None and start_year > end_year:
        raise ValueError(f"start_year {start_year} is after end_year {end_year}")
    return [r for r in releases
            if (family == "all" or r.family == family)
            and (start_year is None or r.date.year >= start_year)
            and (end_year is None or r.date.year <= end_year)]


def plot_timeline(releases, family: str = "all", start_year: int = 2023, end_year: int = 2026,
                  label_all: bool = False):
    """One lane per family, one dot per release (size grows with total parameters); milestones are labelled.

    Pure: draws a new figure from its arguments and returns it. `label_all` labels every release, not only milestones.
    """
    import matplotlib.dates as mdates

    from course_lib.kit.style import CYCLE, subplots

    shown = filter_releases(releases, family, start_year, end_year)
    if not shown:
        raise ValueError(f"no releases for family={family!r} in {start_year}-{end_year}")
    lanes = [f for f in FAMILIES if any(r.family == f for r in shown)]
    fig, ax = subplots(width=12.0, height=max(2.4, 1.2 + 0.55 * len(lanes)))
    for i, lane in enumerate(lanes):
        rows = [r for r in shown if r.family == lane]
        # Area ~ parameter count on a log scale so 1.3B and 1.6T are both visible; unknown size -> small hollow dot.
        sizes = [30 + 25 * math.log10(r.total_params_b + 1) ** 2 if r.total_params_b else 25 for r in rows]
        colour = CYCLE[FAMILIES.index(lane) % len(CYCLE)]  # same colour for a family in every view
        ax.scatter([r.date for r in rows], [i] * len(rows), s=sizes, alpha=0.75, zorder=3, linewidths=1,
                   edgecolors=[colour if r.total_params_b else "black" for r in rows],
                   facecolors=[colour if r.total_params_b else "white" for r in rows])
        k = 0
        for r in rows:
            if label_all or r.name in MILESTONES:
                note = MILESTONES.get(r.name, "")
                text = r.name.replace("DeepSeek-", "") + (f"\n{note}" if note and not label_all else "")
                dy = 12 if k % 2 == 0 else -22  # alternate above/below so neighbours overlap less
                ax.annotate(text, (r.date, i), xytext=(0, dy), textcoords="offset points", ha="center",
                            fontsize=7, va="bottom" if dy > 0 else "top")
                k += 1
    ax.set_yticks(range(len(lanes)), lanes)
    ax.set_ylim(len(lanes) - 0.2, -0.9)  # first family (llm) on top
    ax.set_xlim(dt.date(start_year, 1, 1) - dt.timedelta(days=20), dt.date(end_year, 12, 31) + dt.timedelta(days=20))
    ax.xaxis.set_major_locator(mdates.MonthLocator(bymonth=(1, 7)))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m"))
    ax.set_title(f"DeepSeek public releases {start_year}-{end_year} ({len(shown)} shown; hollow = size not published)")
    return fig


def plot_params(releases, log: bool = True):
    """Total (hollow) and activated (filled) parameters over time; a line joins the two for each MoE release.

    Dense models have one dot. The growing gap between the two series is what Mixture-of-Experts buys:
    model size grows while the compute per token (roughly proportional to activated parameters) grows much less.
    """
    from course_lib.kit.style import COLORS, subplots

    rows = [r for r in releases if r.total_params_b is not None]
    if not rows:
        raise ValueError("none of the releases has a published parameter count")
    fig, ax = subplots(width=11.0, height=4.6)
    for r in rows:
        if r.active_params_b is not None:
            ax.plot([r.date, r.date], [r.active_params_b, r.total_params_b], color=COLORS["grey"], lw=1, zorder=1)
    dense = [r for r in rows if r.active_params_b is None]
    moe = [r for r in rows if r.active_params_b is not None]
    ax.scatter([r.date for r in dense], [r.total_params_b for r in dense], s=28, color=COLORS["blue"],
               label="dense (or activated count not published): total", zorder=3)
    ax.scatter([r.date for r in moe], [r.total_params_b for r in moe], s=42, facecolors="white",
               edgecolors=COLORS["orange"], linewidths=1.5, label="MoE: total parameters", zorder=3)
    ax.scatter([r.date for r in moe], [r.active_params_b for r in moe], s=42, color=COLORS["orange"],
               label="MoE: activated per token", zorder=3)
    for r in moe:
        if r.name in PARAM_LABELS:
            dx, ha = PARAM_LABELS[r.name]
            ax.annotate(f"{r.name.replace('DeepSeek-', '')}: {r.active_params_b:g}B of {r.total_params_b:g}B",
                        (r.date, r.active_params_b), xytext=(dx, -3), textcoords="offset points", ha=ha,
                        va="top", fontsize=7)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel("parameters (billions)" + (", log scale" if log else ""))
    ax.set_title("Total vs activated parameters of DeepSeek releases")
    ax.legend(loc="upper left", fontsize=8)
    return fig
