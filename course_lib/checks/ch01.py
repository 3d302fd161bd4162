"""Exercises of 01_timeline: reading the release dataset like a fact-checker."""
import datetime as dt

from course_lib.checks.core import register

# Small hand-made tables in the shape of timeline.as_records(): tuples, so a learner's in-place edit cannot leak
# from one check run into the next.
_ROWS_A = (
    {"name": "DeepSeek-V2", "total_params_b": 236.0, "active_params_b": 21.0},
    {"name": "DeepSeek-LLM", "total_params_b": 67.0, "active_params_b": None},
    {"name": "DeepSeek-V3", "total_params_b": 671.0, "active_params_b": 37.0},
)
_ROWS_B = (
    {"name": "Toy-MoE", "total_params_b": 16.0, "active_params_b": 2.4},
    {"name": "Unknown-size", "total_params_b": None, "active_params_b": None},
    {"name": "Toy-Dense", "total_params_b": 7.0, "active_params_b": None},
)
_EVENTS_A = (
    {"date": "2025-01-20", "name": "DeepSeek-R1", "introduced": "Reasoning from RL with GRPO, cold start"},
    {"date": "2024-05-06", "name": "DeepSeek-V2", "introduced": "Multi-head latent attention (MLA) and DeepSeekMoE"},
    {"date": "2024-12-26", "name": "DeepSeek-V3", "introduced": "Aux-loss-free balancing, MTP; keeps MLA"},
    {"date": "2024-02-06", "name": "DeepSeekMath", "introduced": "GRPO"},
)
_EVENTS_B = (
    {"date": "2024-06-17", "name": "Coder-V2", "introduced": "uses mla"},
    {"date": "2024-06-17", "name": "Coder-V2-Lite", "introduced": "uses MLA too"},
    {"date": "2025-09-29", "name": "V3.2-Exp", "introduced": "sparse attention"},
)


@register(cases=[(_ROWS_A,), (_ROWS_B,), (_ROWS_A[1:2],)],
          hint=("A dense model publishes no activated count, and some rows publish no size at all: which rows can give "
                "a ratio, and which of the two counts goes on top?",
                "ratio = active_params_b / total_params_b (section 3: the share of the parameters each token uses), "
                "only for rows where neither count is None.",
                "return {r[\"name\"]: r[\"active_params_b\"] / r[\"total_params_b\"] for r in rows\n"
                "           if r[\"active_params_b\"] is not None and r[\"total_params_b\"] is not None}"),
          wrong=[lambda rows: {r["name"]: r["total_params_b"] / r["active_params_b"] for r in rows
                               if r["active_params_b"] is not None},
                 lambda rows: {r["name"]: (r["active_params_b"] or r["total_params_b"] or 0) / (r["total_params_b"] or 1)
                               for r in rows}])
def moe_activation_ratios(rows):
    # Activated share per token = active / total (only where both are published: a dense model has no "active").
    return {r["name"]: r["active_params_b"] / r["total_params_b"] for r in rows
            if r["active_params_b"] is not None and r["total_params_b"] is not None}


@register(cases=[(_EVENTS_A, "MLA"), (_EVENTS_A, "grpo"), (_EVENTS_B, "MLA"), (_EVENTS_A, "Engram")],
          hint=("Two steps: put the rows in date order, then walk them until one's `introduced` text mentions the "
                "keyword. What must you do so that 'grpo' finds 'GRPO', and so that same-day rows keep their order?",
                "ISO dates (YYYY-MM-DD) sort correctly as strings and sorted() is stable, so same-day rows keep their "
                "order; match with keyword.lower() in introduced.lower(); return None when no row matches.",
                "for r in sorted(rows, key=lambda r: r[\"date\"]):\n"
                "       if keyword.lower() in r[\"introduced\"].lower(): return r[\"name\"]\n"
                "   return None"),
          wrong=[lambda rows, kw: next((r["name"] for r in rows if kw in r["introduced"]), None),
                 lambda rows, kw: next((r["name"] for r in sorted(rows, key=lambda r: r["date"], reverse=True)
                                        if kw.lower() in r["introduced"].lower()), None)])
def first_release_with(rows, keyword):
    # Stable sort by date, then the first row whose description mentions the keyword in any case.
    for r in sorted(rows, key=lambda r: r["date"]):
        if keyword.lower() in r["introduced"].lower():
            return r["name"]
    return None


@register(kind="value",
          hint=("Which two `date` fields do you need, and in which form can Python subtract them? `records` holds "
                "ISO strings, `releases` and `by_name` hold datetime.date objects.",
                "days = date(DeepSeek-R1) - date(DeepSeek-V3): a date minus a date is a timedelta, and its .days is "
                "the whole number of days (R1 2025-01-20, V3 2024-12-26).",
                "days = (by_name[\"DeepSeek-R1\"].date - by_name[\"DeepSeek-V3\"].date).days\n"
                "   # = (dt.date(2025, 1, 20) - dt.date(2024, 12, 26)).days = 25"),
          wrong=[24, 26, -25, 0])
def days_from_v3_to_r1():
    return (dt.date(2025, 1, 20) - dt.date(2024, 12, 26)).days


@register(kind="value",
          hint=("Several rows mention MLA in `introduced`: you want the earliest one by date, not the most famous. "
                "V3 uses MLA, but was it the first?",
                "Keep the rows whose `introduced` contains 'mla' in any case, sort them by `date`, take the first "
                "`name`: exercise 2's rule with keyword 'MLA'.",
                "first_mla = my_first_release_with(records, \"MLA\")   # \"DeepSeek-V2\" (2024-05-06)"),
          wrong=["DeepSeek-V3", "DeepSeek-V2-Lite", "DeepSeek-V2.5", "DeepSeek-Coder-V2"])
def first_mla_release():
    return "DeepSeek-V2"


@register(kind="value",
          hint=("Don't go by the version numbers: which of the four came out in 2024 and which in 2025? Read their "
                "`date` fields in the table of section 1.",
                "order = the four names sorted by their release date, ascending (oldest first): the key is "
                "by_name[name].date, or the ISO string in `records`.",
                "order = sorted([\"DeepSeek-R1\", \"DeepSeek-V2\", \"DeepSeek-V3\", \"DeepSeekMath\"], "
                "key=lambda n: by_name[n].date)\n"
                "   # DeepSeekMath 2024-02-06, DeepSeek-V2 2024-05-06, DeepSeek-V3 2024-12-26, DeepSeek-R1 2025-01-20"),
          wrong=[["DeepSeek-V2", "DeepSeek-V3", "DeepSeek-R1", "DeepSeekMath"],
                 ["DeepSeek-R1", "DeepSeek-V3", "DeepSeek-V2", "DeepSeekMath"],
                 ["DeepSeekMath", "DeepSeek-V2", "DeepSeek-R1", "DeepSeek-V3"]])
def release_order():
    return ["DeepSeekMath", "DeepSeek-V2", "DeepSeek-V3", "DeepSeek-R1"]


@register(kind="value",
          hint=("Is R1 a new architecture, or the same network as V3 trained differently? Section 4's first paragraph "
                "and the architecture row of section 5's table answer it.",
                "R1 is 'trained based on DeepSeek-V3-Base' and its README refers to V3 for the architecture: the same "
                "MoE and the same router (V3 §2.1.2). A claim the sources contradict is 'false'; a true one that "
                "leads to a wrong picture is 'misleading'.",
                "verdict = \"false\"   # claim #30 in section 6's show_claims(\"false\"), with its evidence"),
          wrong=["true", "misleading", "garbled", True])
def verdict_r1_dynamic_gating():
    return "false"
