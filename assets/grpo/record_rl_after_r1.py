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
  dr_grpo       r - mean advantages, sum / (B * L) (Dr. GRPO §3.1)
  gspo          one ratio per sequence, clip (1 - 3e-4, 1 + 4e-4) (GSPO §5.1's ranges)
Logged per step: reward, accuracy, the entropy estimate (mean -log pi_old of the sampled tokens: at temperature 1
an unbiased estimate of the policy's per-token entropy), clip_frac, the share of groups whose rewards are all equal
(before any filtering), mean completion length of right and of wrong answers, samples drawn; held-out pass@1 every
--eval-every steps. The notebook replays the file and can rerun `run(...)` live.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))   # run from a clone without installing the package

from course_lib import grpo  # noqa: E402
from course_lib import policy_losses as pl  # noqa: E402
from course_lib.toys import arith  # noqa: E402

RUNS = {
    "grpo": dict(variant="grpo"),
    "clip_higher": dict(variant="grpo", epsilon_high=0.28),
    "dapo": dict(variant="dapo", epsilon_high=0.28),
    "dr_grpo": dict(variant="dr_grpo"),
    "gspo": dict(variant="gspo", epsilon=3e-4, epsilon_high=4e-4),
}


def _pad_cat(rolls, eos):
    width = max(r["ids"].shape[1] for r in rolls)
    ids = torch.cat([torch.nn.functional.pad(r["ids"], (0, width - r["ids"].shape[1]), value=eos) for r in rolls])
    n_prompt = rolls[0]["n_prompt"]
    mask = torch.cat([torch.nn.functional.pad(r["mask"], (0, width - n_prompt - r["mask"].shape[1])) for r in rolls])
    return ids, mask


def run(name: str, steps: int = 40, mu: int = 2, refill: int = 2, eval_every: int = 5, seed: int = 0,
        device="cpu", progress: bool = True) -> dict:
    """One RL run of `name` (a key of RUNS); returns its history (lists, one entry per step or evaluation)."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    model, tok = arith.load_base(device)
    cfg = arith.grpo_config(seed=seed)
    kw = dict(RUNS[name])
    variant = kw.pop("variant")
    if variant == "dr_grpo":
        kw["max_completion_length"] = cfg.max_new_tokens
    eos, fns, G, n = arith.eos_id(tok), arith.reward_fns(), cfg.group_size, cfg.prompts_per_step
    rng, gen = random.Random(seed), torch.Generator(device=device).manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    h = {k: [] for k in ("reward", "accuracy", "entropy", "clip_frac", "no_signal", "len_right", "len_wrong",
                         "samples", "time_s")}
    h["eval_step"], h["eval_accuracy"] = [0], [arith.held_out_pass_at_1(model, tok)["accuracy"]]
    samples, t_train = 0, 0.0
    for step in tqdm(range(steps), desc=name, disable=not progress, leave=False):
        t0 = time.perf_counter()
        model.eval()
        rolls, rewards, accs, no_signal, seen, kept = [], [], [], 0, 0, 0
        for _ in range(1 + (refill if name == "dapo" else 0)):
            prompts, answers = arith.sample_prompts(n, rng)
            roll = grpo.rollout(model, tok, prompts, G, cfg.max_new_tokens, cfg.temperature, eos, gen)
            ans = [a for a in answers for _ in range(G)]
            acc = torch.tensor(fns["accuracy"](roll["texts"], ans))
            r = acc + torch.tensor(fns["format"](roll["texts"], ans))
            samples += len(r)
            informative = pl.informative_groups(r, G)
            if not seen:    # the first rollout of the step is the statistic every run logs alike
                h["no_signal"].append(1.0 - informative.float().mean().item())
                h["accuracy"].append(acc.mean().item())
                lens = roll["mask"].sum(1).cpu()
                h["len_right"].append(lens[acc == 1].mean().item() if (acc == 1).any() else float("nan"))
                h["len_wrong"].append(lens[acc == 0].mean().item() if (acc == 0).any() else float("nan"))
            seen += len(informative)
            if name == "dapo":          # DAPO §3.2: keep only the groups whose rewards differ
                rows = informative.repeat_interleave(G)
                roll = {"ids": roll["ids"][rows.to(roll["ids"].device)], "mask": roll["mask"][rows.to(device)],
                        "n_prompt": roll["n_prompt"]}
                r = r[rows]
            rolls.append(roll)
            rewards.append(r)
            kept += len(r) // G
            if kept >= n:
                break
        rewards = torch.cat(rewards).float().to(device)
        ids, mask = _pad_cat(rolls, eos)
        h["reward"].append(rewards.mean().item() if len(rewards) else float("nan"))
        clip = 0.0
        ent = float("nan")
        if len(rewards):
            adv = pl.advantages(rewards, G, variant).to(device)
            n_prompt = rolls[0]["n_prompt"]
            model.train()
            with torch.no_grad():
                old = grpo.completion_logprobs(model, ids, n_prompt)
            ent = (-(old * mask).sum() / mask.sum()).item()
            for _ in range(mu):
                logp = grpo.completion_logprobs(model, ids, n_prompt)
                loss, stats = pl.policy_loss(logp, old, adv, mask, variant, **kw)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                clip = stats["clip_frac"]
        h["entropy"].append(ent)
        h["clip_frac"].append(clip)
        h["samples"].append(samples)
        t_train += time.perf_counter() - t0
        h["time_s"].append(t_train)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            model.eval()
            h["eval_step"].append(step + 1)
            h["eval_accuracy"].append(arith.held_out_pass_at_1(model, tok)["accuracy"])
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
