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
          hint="Keep only rows where both counts are known (not None); the ratio is active / total.",
          wrong=[lambda rows: {r["name"]: r["total_params_b"] / r["active_params_b"] for r in rows
                               if r["active_params_b"] is not None},
                 lambda rows: {r["name"]: (r["active_params_b"] or r["total_params_b"] or 0) / (r["total_params_b"] or 1)
                               for r in rows}])
def moe_activation_ratios(rows):
    # Activated share per token = active / total (only where both are published: a dense model has no "active").
    return {r["name"]: r["active_params_b"] / r["total_params_b"] for r in rows
            if r["active_params_b"] is not None and r["total_params_b"] is not None}


@register(cases=[(_EVENTS_A, "MLA"), (_EVENTS_A, "grpo"), (_EVENTS_B, "MLA"), (_EVENTS_A, "Engram")],
          hint="Case-insensitive search in 'introduced'; compare ISO dates (they sort as strings); "
               "on the same day keep the row that comes first; None when nothing matches.",
          wrong=[lambda rows, kw: next((r["name"] for r in rows if kw in r["introduced"]), None),
                 lambda rows, kw: next((r["name"] for r in sorted(rows, key=lambda r: r["date"], reverse=True)
                                        if kw.lower() in r["introduced"].lower()), None)])
def first_release_with(rows, keyword):
    # Stable sort by date, then the first row whose description mentions the keyword in any case.
    for r in sorted(rows, key=lambda r: r["date"]):
        if keyword.lower() in r["introduced"].lower():
            return r["name"]
    return None


@register(kind="value", hint="Look up the rows of DeepSeek-V3 and DeepSeek-R1 in the dataset and subtract the dates "
                             "(datetime.date objects subtract to a timedelta; take .days).",
          wrong=[24, 26, -25, 0])
def days_from_v3_to_r1():
    return (dt.date(2025, 1, 20) - dt.date(2024, 12, 26)).days


@register(kind="value", hint="Filter the dataset for 'MLA' in `introduced`, sort by date, take the first name. "
                             "V3 uses MLA, but it was not the first.",
          wrong=["DeepSeek-V3", "DeepSeek-V2-Lite", "DeepSeek-V2.5", "DeepSeek-Coder-V2"])
def first_mla_release():
    return "DeepSeek-V2"


@register(kind="value", hint="Sort these four by their release dates in the dataset: "
                             "DeepSeek-R1, DeepSeek-V2, DeepSeek-V3, DeepSeekMath.",
          wrong=[["DeepSeek-V2", "DeepSeek-V3", "DeepSeek-R1", "DeepSeekMath"],
                 ["DeepSeek-R1", "DeepSeek-V3", "DeepSeek-V2", "DeepSeekMath"],
                 ["DeepSeekMath", "DeepSeek-V2", "DeepSeek-R1", "DeepSeek-V3"]])
def release_order():
    return ["DeepSeekMath", "DeepSeek-V2", "DeepSeek-V3", "DeepSeek-R1"]


@register(kind="value", hint="Read the architecture rows of the R1 README's table (and the claims file): "
                             "does R1 route tokens differently from V3? Answer 'true', 'false', 'misleading' or 'garbled'.",
          wrong=["true", "misleading", "garbled", True])
def verdict_r1_dynamic_gating():
    return "false"
