"""Benchmark: the R1-Zero toy run of notebook 05 -- time and RL steps to 0.9 held-out accuracy, rollout speed.

    python -m course_lib.bench grpo [--threads 2] [--steps N] [--variants] [--json FILE]

Starts from the shipped base policy (assets/grpo/base.pt) with the notebook's default settings
(`arith.grpo_config()`), evaluates held-out pass@1 every `eval_every` steps and reports the first evaluation at or
above 0.9: its RL step and the training seconds so far (evaluation time excluded), plus wall and CPU seconds of the
whole run. Rollout speed is measured on its own: completion tokens sampled per second for one step's batch.
--variants also runs the loss types grpo, dr_grpo and dapo side by side from the same start and seed (the notebook's
"loss variants" table reads the JSON that --json writes).
"""
from __future__ import annotations

import argparse
import json
import random
import time

import torch

from course_lib.toys import arith
from course_lib import grpo
from course_lib.kit.device import get_device
from course_lib.bench.core import print_table, time_fn


def first_reaching(hist: dict, target: float = 0.9):
    """(step, training seconds) of the first held-out evaluation >= target, or (None, None)."""
    for step, acc in zip(hist["eval_step"], hist["eval_accuracy"]):
        if acc >= target:
            return step, (0.0 if step == 0 else hist["time_s"][step - 1])
    return None, None


def run(loss_type: str, steps: int | None, device) -> dict:
    model, tok = arith.load_base(device)
    cfg = arith.grpo_config(loss_type=loss_type, **({} if steps is None else {"steps": steps}))
    wall, cpu = time.perf_counter(), time.process_time()
    hist = arith.r1_zero(model, tok, cfg, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    step90, t90 = first_reaching(hist)
    return {"loss_type": loss_type, "steps": hist["step"][-1], "train_s": hist["time_s"][-1], "wall_s": wall,
            "cpu_s": cpu, "step_to_0.9": step90, "train_s_to_0.9": t90, "history": hist}


def rollout_speed(device) -> float:
    model, tok = arith.load_base(device)
    cfg = arith.grpo_config()
    prompts, _ = arith.sample_prompts(cfg.prompts_per_step, random.Random(0))
    gen = torch.Generator(device=device).manual_seed(0)
    n_tokens = []

    def once():
        roll = grpo.rollout(model, tok, prompts, cfg.group_size, cfg.max_new_tokens, 1.0, arith.eos_id(tok), gen)
        n_tokens.append(roll["mask"].sum().item())

    seconds = time_fn(once, repeat=5, warmup=1)
    return sum(n_tokens) / len(n_tokens) / seconds


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m course_lib.bench grpo", description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="RL steps (default: the notebook's)")
    ap.add_argument("--variants", action="store_true", help="also run dr_grpo and dapo")
    ap.add_argument("--json", default=None, help="write the results (with histories) to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = get_device()
    print(f"device {device}, {args.threads} threads, torch {torch.__version__}")
    print(f"rollout: {rollout_speed(device):.0f} completion tokens/s (one step's batch, base policy)")
    results = [run(lt, args.steps, device) for lt in (("grpo", "dr_grpo", "dapo") if args.variants else ("grpo",))]
    rows = []
    for r in results:
        h = r["history"]
        rows.append([r["loss_type"], r["steps"], r["train_s"], r["wall_s"], r["cpu_s"], str(r["step_to_0.9"]),
                     "-" if r["train_s_to_0.9"] is None else f"{r['train_s_to_0.9']:.1f}",
                     h["eval_accuracy"][0], h["eval_accuracy"][-1], h["eval_think_share"][-1], h["eval_length"][0],
                     h["eval_length"][-1]])
    print_table(rows, ["loss", "steps", "train s", "wall s", "cpu s", "step to 0.9", "train s to 0.9",
                       "acc start", "acc end", "think end", "len start", "len end"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "torch": torch.__version__, "results": results}, f)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
