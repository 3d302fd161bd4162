"""Record the RL runs that notebook 12 (RL after R1) plots: five policy losses on the R1-Zero toy of notebook 05.

    python assets/grpo/record_rl_after_r1.py                 # writes assets/grpo/rl_after_r1.json

Every run starts from the shipped base policy (assets/grpo/base.pt) with notebook 05's settings
(`arith.grpo_config()`: 8 questions x 8 samples per step, lr 5e-4, temperature 1), beta = 0, and takes --mu policy
updates per rollout (with one update every ratio is 1 and the clip never acts). The runs differ only in the loss
(`course_lib.policy_losses.policy_loss`):
  grpo          token ratios, clip (0.8, 1.2), 1/|o_i| per sequence (DeepSeekMath eq. 3)
  clip_higher   the same with DAPO's clip-higher (0.8, 1.28) (DAPO eq. 10)
  dapo          clip-higher + token-level mean + dynamic sampling: groups whose rewards are all equal are dropped and
                refilled from up to --refill extra rollouts (DAPO §3.1-3.3)
  dr_grpo       r - mean advantages, sum / (B * L) (Dr. GRPO §3.2)
  gspo          one ratio per sequence, clip (1 - 3e-4, 1 + 4e-4) (GSPO §5.1's ranges)
Logged per step: reward, accuracy, the entropy estimate (mean -log pi_old of the sampled tokens: at temperature 1
an unbiased estimate of the policy's per-token entropy), clip_frac, the share of groups whose rewards are all equal
(before any filtering), mean completion length of right and of wrong answers, samples drawn; held-out pass@1 every
--eval-every steps. The notebook replays the file and can rerun `run(...)` live.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))   # run from a clone without installing the package

from course_lib.bench.rl import train_variant  # noqa: E402

RUNS = {
    "grpo": dict(variant="grpo"),
    "clip_higher": dict(variant="grpo", epsilon_high=0.28),
    "dapo": dict(variant="dapo", epsilon_high=0.28),
    "dr_grpo": dict(variant="dr_grpo"),
    "gspo": dict(variant="gspo", epsilon=3e-4, epsilon_high=4e-4),
}


def run(name: str, steps: int = 40, mu: int = 2, refill: int = 2, eval_every: int = 5, seed: int = 0,
        device="cpu", progress: bool = True) -> dict:
    """One RL run of `name` (a key of RUNS); returns its history (lists, one entry per step or evaluation).

    The loop is `course_lib.bench.rl.train_variant`, the one `python -m course_lib.bench rl` runs; here DAPO's
    dynamic sampling is on and its overlong filtering (dropping truncated completions) is off."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    records = train_variant(RUNS[name], steps, mu, refill, eval_every, device, seed, dynamic_sampling=name == "dapo")
    keys = ("reward", "accuracy", "entropy", "clip_frac", "no_signal", "len_right", "len_wrong", "samples", "time_s")
    h = {k: [] for k in keys}
    h.update(next(records))     # eval_step, eval_accuracy: lists train_variant extends after each evaluation
    for rec in tqdm(records, total=steps, desc=name, disable=not progress, leave=False):
        for k in keys:
            h[k].append(rec[k])
    return h


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--mu", type=int, default=2)
    ap.add_argument("--refill", type=int, default=2)
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "rl_after_r1.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = {"torch": torch.__version__, "threads": args.threads, "args": vars(args) | {"out": None}, "runs": {}}
    for name in RUNS:
        out["runs"][name] = [run(name, args.steps, args.mu, args.refill, seed=s) for s in seeds]
        last = out["runs"][name]
        print(f"{name:12s} held-out accuracy at the end: {[r['eval_accuracy'][-1] for r in last]}; "
              f"entropy {[round(r['entropy'][-1], 3) for r in last]}")
    Path(args.out).write_text(json.dumps(out) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
