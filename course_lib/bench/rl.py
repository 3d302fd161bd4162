"""Benchmark: GRPO, Dr. GRPO, DAPO and GSPO side by side on the R1-Zero toy of notebook 05, and Keep Routing's cost.

    python -m course_lib.bench rl [--threads 2] [--steps 30] [--mu 2] [--target 0.9] [--json FILE]

Every variant starts from the shipped base policy (assets/grpo/base.pt) with notebook 05's settings
(`arith.grpo_config()`: 8 questions x 8 samples per step, lr 5e-4) and the same seed, and trains with
`course_lib.policy_losses.policy_loss`:
  grpo     token ratios, clip 0.2, per-sequence mean (DeepSeekMath eq. 3)
  dr_grpo  no std in the advantage, sum / (B * L) (Dr. GRPO §3.2)
  dapo     clip-higher 0.2 / 0.28, token-level mean, dynamic sampling (groups whose rewards are all equal are dropped
           and refilled from up to --refill extra rollouts) and truncated completions filtered out (DAPO §3)
  gspo     one ratio per sequence, clip 3e-4 / 4e-4 (the GSPO paper's ranges, §5.1)
All use beta = 0 (DAPO, Dr. GRPO and GSPO train without a KL term) and --mu policy updates per rollout: with one
update the ratios are all 1 and GRPO and GSPO take the same step, so the default reuses each rollout twice.
The variants take turns, one RL step each. Reported per variant: RL steps and training seconds (evaluation excluded)
until held-out pass@1 first reaches --target, wall seconds (evaluation included), the samples drawn, the held-out
accuracy curve, and for DAPO the share of groups it dropped.

Keep Routing (V3.2 §3.1) is timed on nano-DeepSeek (TINY) as a policy: one training forward + backward over a batch
of rollouts with the routes the model chooses itself, and with the rollout's routes replayed, interleaved.
"""
from __future__ import annotations

import argparse
import json
import random
import time

import torch

from course_lib.toys import arith
from course_lib import grpo, nano
from course_lib import policy_losses as pl
from course_lib.kit.device import get_device
from course_lib.model import token_logprobs
from course_lib.bench.core import compare, print_table

VARIANTS = {
    "grpo": dict(variant="grpo"),
    "dr_grpo": dict(variant="dr_grpo"),
    "dapo": dict(variant="dapo", epsilon_high=0.28),
    "gspo": dict(variant="gspo", epsilon=3e-4, epsilon_high=4e-4),
}


def _pad_cat(rolls: list[dict], eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Join rollouts whose completions stopped at different lengths: pad ids with eos and the mask with 0."""
    width = max(r["ids"].shape[1] for r in rolls)
    ids = torch.cat([torch.nn.functional.pad(r["ids"], (0, width - r["ids"].shape[1]), value=eos) for r in rolls])
    n_prompt = rolls[0]["n_prompt"]
    mask = torch.cat([torch.nn.functional.pad(r["mask"], (0, width - n_prompt - r["mask"].shape[1])) for r in rolls])
    return ids, mask


def train_variant(spec: dict, steps: int, mu: int, refill: int, eval_every: int, device, seed: int = 0, *,
                  dynamic_sampling: bool = False, filter_truncated: bool = False):
    """One RL run on the addition toy, the loop the bench and assets/grpo/record_rl_after_r1.py share; a generator.

    Starts from the shipped base policy with notebook 05's settings (`arith.grpo_config()`), beta = 0, and trains with
    `pl.policy_loss(..., **spec)` (spec: "variant" and the loss's keyword arguments, like VARIANTS' values), taking
    `mu` policy updates per rollout. dynamic_sampling: DAPO §3.2, groups whose rewards are all equal are dropped and
    refilled from up to `refill` extra rollouts; filter_truncated: completions cut at max_new_tokens are masked out.
    Yields {"eval_step": [0], "eval_accuracy": [held-out pass@1 of the base policy]} first, two lists it extends
    after every eval_every-th step and the last, then one record per RL step:
      reward               mean reward of the completions trained on (nan when dynamic sampling kept none)
      samples, time_s      completions drawn (refills included) and training seconds (evaluation excluded) so far
      groups, dropped      groups drawn, and those dynamic sampling dropped (0 without it)
      no_signal, accuracy, len_right, len_wrong   of the step's first rollout, before any filtering: the share of
                           groups whose rewards are all equal, accuracy, mean completion length of right / wrong answers
      entropy, clip_frac   mean -log pi_old of the tokens trained on; the last update's clip fraction
    """
    model, tok = arith.load_base(device)
    cfg = arith.grpo_config(steps=steps, seed=seed)
    kw = dict(spec)
    variant = kw.pop("variant")
    if variant == "dr_grpo":
        kw["max_completion_length"] = cfg.max_new_tokens
    eos, fns, G, n = arith.eos_id(tok), arith.reward_fns(), cfg.group_size, cfg.prompts_per_step
    rng, gen = random.Random(seed), torch.Generator(device=device).manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    evals = {"eval_step": [0], "eval_accuracy": [arith.held_out_pass_at_1(model, tok)["accuracy"]]}
    yield evals
    samples, time_s = 0, 0.0
    for step in range(steps):
        t0 = time.perf_counter()
        model.eval()
        rec = {"groups": 0, "dropped": 0}
        rolls, rewards, kept = [], [], 0
        for i in range(1 + (refill if dynamic_sampling else 0)):
            prompts, answers = arith.sample_prompts(n, rng)
            roll = grpo.rollout(model, tok, prompts, G, cfg.max_new_tokens, cfg.temperature, eos, gen)
            ans = [a for a in answers for _ in range(G)]
            parts = {k: torch.tensor(f(roll["texts"], ans)) for k, f in fns.items()}
            r = sum(parts.values())
            samples += len(r)
            informative = pl.informative_groups(r, G)
            rec["groups"] += len(informative)
            if i == 0:      # the first rollout of the step is the statistic every run logs alike
                acc, lens = parts["accuracy"], roll["mask"].sum(1).cpu()
                rec["no_signal"] = 1.0 - informative.float().mean().item()
                rec["accuracy"] = acc.mean().item()
                rec["len_right"] = lens[acc == 1].mean().item() if (acc == 1).any() else float("nan")
                rec["len_wrong"] = lens[acc == 0].mean().item() if (acc == 0).any() else float("nan")
            if dynamic_sampling:     # DAPO §3.2: keep only groups whose rewards differ, refill the rest
                rec["dropped"] += int((~informative).sum())
                rows = informative.repeat_interleave(G)
                roll = {"ids": roll["ids"][rows.to(roll["ids"].device)],
                        "mask": roll["mask"][rows.to(roll["mask"].device)], "n_prompt": roll["n_prompt"]}
                r = r[rows]
            rolls.append(roll)
            rewards.append(r)
            kept += len(r) // G
            if kept >= n:
                break
        rewards = torch.cat(rewards).float().to(device)
        ids, mask = _pad_cat(rolls, eos)
        rec["reward"] = rewards.mean().item() if len(rewards) else float("nan")
        rec["entropy"], rec["clip_frac"] = float("nan"), 0.0
        if len(rewards):
            adv = pl.advantages(rewards, G, variant).to(device)
            truncated = (mask.sum(1) == mask.shape[1]) & (ids[:, -1] != eos) if filter_truncated else None
            n_prompt = rolls[0]["n_prompt"]
            model.train()
            with torch.no_grad():
                old = grpo.completion_logprobs(model, ids, n_prompt)
            rec["entropy"] = (-(old * mask).sum() / mask.sum()).item()
            for _ in range(mu):
                logp = grpo.completion_logprobs(model, ids, n_prompt)
                loss, stats = pl.policy_loss(logp, old, adv, mask, variant, truncated=truncated, **kw)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                rec["clip_frac"] = stats["clip_frac"]
        time_s += time.perf_counter() - t0
        rec["samples"], rec["time_s"] = samples, time_s
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            model.eval()
            evals["eval_step"].append(step + 1)
            evals["eval_accuracy"].append(arith.held_out_pass_at_1(model, tok)["accuracy"])
        yield rec


def train_steps(name: str, steps: int, mu: int, refill: int, eval_every: int, device, seed: int = 0):
    """One RL run of variant `name` on the addition toy, one step per next(); yields its history after each step."""
    run = train_variant(VARIANTS[name], steps, mu, refill, eval_every, device, seed,
                        dynamic_sampling=name == "dapo", filter_truncated=name == "dapo")
    hist = {**next(run), "time_s": [], "reward": [], "dropped": [], "samples": 0}   # train_variant extends eval_*
    for rec in run:
        hist["reward"].append(rec["reward"])
        hist["dropped"].append(rec["dropped"] / rec["groups"] if rec["groups"] else 0.0)
        hist["time_s"].append(rec["time_s"])
        hist["samples"] = rec["samples"]
        yield hist


def first_reaching(hist: dict, target: float):
    """(step, training seconds) of the first held-out evaluation >= target, or (None, None)."""
    for step, acc in zip(hist["eval_step"], hist["eval_accuracy"]):
        if acc >= target:
            return step, (0.0 if step == 0 else hist["time_s"][step - 1])
    return None, None


def keep_routing_overhead(batch: int, seq_len: int, repeat: int, device) -> dict:
    """Seconds per training forward + backward of nano-DeepSeek TINY with its own routes and with replayed ones."""
    torch.manual_seed(0)
    model = nano.main_model(nano.build_model(nano.TINY)).to(device)
    ids = torch.randint(0, nano.TINY.vocab_size, (batch, seq_len), device=device)
    with torch.no_grad(), pl.record_routes(model) as rec:
        token_logprobs(model, ids)
    routes = pl.routes_for_training(rec, seq_len)
    model.train()

    def step(replay):
        def run():
            model.zero_grad(set_to_none=True)
            if replay:
                with pl.replay_routes(model, routes):
                    token_logprobs(model, ids).sum().backward()
            else:
                token_logprobs(model, ids).sum().backward()
        return run

    return compare({"own routes": step(False), "Keep Routing": step(True)}, repeat=repeat, warmup=1)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m course_lib.bench rl", description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30, help="RL steps per variant")
    ap.add_argument("--mu", type=int, default=2, help="policy updates per rollout")
    ap.add_argument("--refill", type=int, default=2, help="DAPO: extra rollouts at most to refill dropped groups")
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--target", type=float, default=0.9, help="held-out accuracy to reach")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    ap.add_argument("--kr-batch", type=int, default=16, help="Keep Routing timing: rollouts per batch")
    ap.add_argument("--kr-len", type=int, default=32, help="Keep Routing timing: tokens per rollout")
    ap.add_argument("--repeat", type=int, default=5, help="Keep Routing timing: timed steps")
    ap.add_argument("--json", default=None, help="write the results (with histories) to this file")
    args = ap.parse_args(argv)
    names = args.variants.split(",")
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        ap.error(f"--variants: unknown {bad}; choose from {list(VARIANTS)}")
    for opt in ("steps", "mu", "eval_every", "kr_batch", "kr_len", "repeat"):
        if getattr(args, opt) < 1:
            ap.error(f"--{opt.replace('_', '-')} must be >= 1")
    if args.refill < 0 or not 0 < args.target <= 1:
        ap.error("--refill must be >= 0 and --target in (0, 1]")
    torch.set_num_threads(args.threads)
    device = get_device()
    print(f"device {device}, {args.threads} threads, torch {torch.__version__}; {args.steps} steps, mu={args.mu}")
    # the variants take turns, one RL step each, so a change in machine load hits all of them alike
    runs = {n: train_steps(n, args.steps, args.mu, args.refill, args.eval_every, device) for n in names}
    results = {n: {"wall_s": 0.0} for n in names}
    for _ in range(args.steps):
        for name, run in runs.items():
            wall = time.perf_counter()
            results[name]["history"] = next(run)
            results[name]["wall_s"] += time.perf_counter() - wall
    rows = []
    for name, res in results.items():
        h = res["history"]
        step_t, t_t = first_reaching(h, args.target)
        rows.append([name, len(h["time_s"]), h["time_s"][-1], res["wall_s"], h["samples"],
                     "-" if step_t is None else str(step_t), "-" if t_t is None else f"{t_t:.1f}",
                     h["eval_accuracy"][0], h["eval_accuracy"][-1], sum(h["dropped"]) / len(h["dropped"])])
    print_table(rows, ["variant", "steps", "train s", "wall s", "samples", f"step to {args.target:g}",
                       f"train s to {args.target:g}", "acc start", "acc end", "dropped"])
    print("held-out accuracy by RL step:")
    steps = results[names[0]]["history"]["eval_step"]
    print_table([[s] + [results[n]["history"]["eval_accuracy"][i] for n in names] for i, s in enumerate(steps)],
                ["step"] + names)
    kr = keep_routing_overhead(args.kr_batch, args.kr_len, args.repeat, device)
    print(f"Keep Routing on nano-DeepSeek TINY, forward + backward of {args.kr_batch} x {args.kr_len} tokens: "
          f"{kr['own routes'] * 1e3:.1f} ms with its own routes, {kr['Keep Routing'] * 1e3:.1f} ms replayed "
          f"({kr['Keep Routing'] / kr['own routes']:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "torch": torch.__version__, "args": vars(args), "results": results,
                       "keep_routing_s": kr}, f)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
