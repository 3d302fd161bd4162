"""Notebook 06's student comparison with a fourth arm, on-policy distillation (OPD), at the same budget.

Runs the code cells of notebooks/06_distillation.ipynb in order (the same teacher pipeline, seeds and three student
arms (a) SFT on traces, (b) logit KD, (c) RL, so their numbers are 06's), then trains (d): the same student base by
`distill.on_policy_distill` from the final R1 teacher, with the budget of (c): STEPS["student"] optimizer steps of
8 prompts x 4 samples = 32 student-sampled sequences each (the (a)/(b) arms take 32 teacher sequences per step).
Writes opd_students.json (every arm's `r1_recipe.held_out_metrics` metrics and training seconds) and opd_teacher.pt (the final
R1 teacher's weights, to distil from without rerunning 06) next to this file. Extra --lr values rerun arm (d) at other
learning rates from the same student base, for the sensitivity table in README.md.

    python assets/engram/opd_students.py            # about 2-5 minutes on a 2-core CPU
    python assets/engram/opd_students.py --scale 5  # 06's LONGER_RUN (5x every stage's steps)
    python assets/engram/opd_students.py --lr 3e-4 1e-3 3e-3   # what README.md reports
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "06_distillation.ipynb"
OUT = Path(__file__).resolve().parent / "opd_students.json"
TEACHER = Path(__file__).resolve().parent / "opd_teacher.pt"
LAST_CELL = 'measure("(c) RL on student"'       # run 06 up to and including its third arm
OPD_LR = 3e-4                                     # the RL arm (c)'s lr and optimizer: OPD is on-policy like it


def run(scale: int = 1, out: Path = OUT, lrs=(OPD_LR,), teacher_out: Path | None = TEACHER) -> dict:
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("COURSE_WIDGETS", "static")
    sys.path.insert(0, str(ROOT))
    cells = [c for c in json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    ns: dict = {"__name__": "__opd__"}
    cwd = os.getcwd()
    os.chdir(NOTEBOOK.parent)
    try:
        for cell in cells:
            src = "".join(cell["source"])
            if scale != 1 and "LONGER_RUN = False" in src:
                src = src.replace("SCALE = 5 if LONGER_RUN else 1", f"SCALE = {scale}")
            exec(compile(src, "06_distillation.ipynb", "exec"), ns)
            if LAST_CELL in src:
                break
        else:
            raise RuntimeError(f"no cell of {NOTEBOOK.name} contains {LAST_CELL!r}")
        import matplotlib.pyplot as plt
        plt.close("all")

        from course_lib import distill
        from course_lib.toys import r1_recipe

        sweep, hist = {}, None
        for i, lr in enumerate(lrs):
            student = r1_recipe.clone(ns["student_base"])
            t0 = time.perf_counter()
            h = distill.on_policy_distill(student, ns["r1"], ns["tok"], r1_recipe.sample_prompts(general_share=0.25),
                                          ns["STEPS"]["student"], prompts_per_step=ns["RL"]["prompts_per_step"],
                                          group_size=ns["RL"]["group_size"], max_new_tokens=r1_recipe.MAX_NEW_TOKENS,
                                          lr=lr, eos_id=r1_recipe.eos_id(ns["tok"]), desc=f"(d) OPD lr={lr:g}")
            name = "(d) on-policy distillation" if i == 0 else f"(d) OPD lr={lr:g}"
            ns["measure"](name, student, time.perf_counter() - t0)
            sweep[f"{lr:g}"] = ns["results"][name]
            hist = hist or h
        if teacher_out is not None:
            import torch
            torch.save({"state": ns["r1"].state_dict(), "config": __import__("dataclasses").asdict(ns["r1"].cfg)},
                       teacher_out)
    finally:
        os.chdir(cwd)
    names = ["student base", "(a) SFT on traces", "(b) logit KD", "(c) RL on student", "(d) on-policy distillation",
             "R1"]
    results = {n: ns["results"][n] for n in names}
    print(r1_recipe.results_table(results))
    record = {"scale": scale, "student_steps": ns["STEPS"]["student"], "sequences_per_step": 32, "opd_lr": lrs[0],
              "opd_loss_first_last": [hist["loss"][0], hist["loss"][-1]], "results": results, "lr_sweep": sweep}
    out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=1, help="multiply every stage's steps (06's LONGER_RUN is 5)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--lr", type=float, nargs="+", default=[OPD_LR], help="OPD learning rates; the first is arm (d)")
    ap.add_argument("--teacher-out", type=Path, default=TEACHER)
    args = ap.parse_args(argv)
    run(args.scale, args.out, args.lr, args.teacher_out)


if __name__ == "__main__":
    main()
