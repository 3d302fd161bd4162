"""GRPO: Group Relative Policy Optimization, at toy scale.

Papers (equation numbers refer to the arXiv versions):
  * DeepSeekMath (arXiv 2402.03300) §4.1: GRPO itself -- eq. (3) objective, eq. (4) k3 KL estimator,
    §4.1.2 outcome-supervision advantages, Figure 4 (PPO vs GRPO).
  * DeepSeek-R1 (arXiv 2501.12948) §2.2.1: the same objective, used for R1-Zero with rule-based rewards.
  * DAPO (arXiv 2503.14476) eq. (8) the objective, eq. (10) the decoupled clip (epsilon_low / epsilon_high),
    eq. (12) the token-level loss.
  * Dr. GRPO, "Understanding R1-Zero-Like Training" (arXiv 2503.20783) §3.2: no 1/|o_i|, no std scaling (§3.1
    describes the biases these cause).

The loss variants follow the definitions in TRL's GRPOTrainer (huggingface/trl, trl/trainer/grpo_trainer.py at
commit f2cd577: advantages in `_generate_and_score_completions`, lines 2687-2707; the loss in `_compute_loss`,
lines 3070-3141). Where TRL and a paper differ, the docstring says which one we follow.

Shapes used throughout: B completions (= n_prompts * G, each group's G samples next to each other), T completion
positions (padded). `mask` is 1.0 for real completion tokens and 0.0 for padding.

The second half of the file is a small, reusable training loop (`grpo_train`) around these pieces.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from course_lib.kit.validate import int_at_least, one_of

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


# ----------------------------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------------------------

def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """One advantage per completion, the group's own mean as the baseline (no value model).

    DeepSeekMath §4.1.2 (outcome supervision): every token of completion i gets
        A_i = (r_i - mean(r_group)) / std(r_group)
    `scale` picks the denominator, as TRL's `scale_rewards`:
        "group": std of the completion's own group (DeepSeekMath, R1)
        "batch": std of all rewards in the batch (the mean stays per group)
        "none":  no division at all (Dr. GRPO §3.1: the std term over-weights too-easy / too-hard questions)
    std is the unbiased sample std (torch.std), and eps keeps a group whose rewards are all equal at 0 -- the same
    choice as TRL (eps = 1e-4).

    rewards: (B,) with B = n_prompts * group_size, each group's samples consecutive.
    """
    int_at_least("group_size", group_size, 2, " (a group of one has no baseline)")
    one_of("scale", scale, SCALE_REWARDS)
    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (one reward per completion), got shape {tuple(rewards.shape)}")
    if rewards.numel() == 0 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards has {rewards.numel()} entries, not a positive multiple of group_size={group_size}")
    grouped = rewards.view(-1, group_size)
    # A_i = r_i - mean(group): the group is the baseline
    adv = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
    if scale == "group":
        std = grouped.std(dim=1).repeat_interleave(group_size)
        adv = adv / (std + eps)
    elif scale == "batch":
        adv = adv / (rewards.std() + eps)
    return adv


# ----------------------------------------------------------------------------------------------------------------
# Per-token pieces
# ----------------------------------------------------------------------------------------------------------------

def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from the log-probs of the sampled tokens.

    DeepSeekMath eq. (4) (Schulman's "k3"):
        D_KL = pi_ref / pi_theta - log(pi_ref / pi_theta) - 1
    With x = pi_ref/pi_theta, x - log x - 1 >= 0 for every x > 0, and its mean over tokens sampled from pi_theta
    is exactly KL(pi_theta || pi_ref) (because E[x] = 1 under pi_theta).
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(f"ref_logp shape {tuple(ref_logp.shape)} does not match logp shape {tuple(logp.shape)}")
    log_ratio = ref_logp - logp  # log(pi_ref / pi_theta)
    return torch.exp(log_ratio) - log_ratio - 1.0


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      epsilon: float = 0.2, epsilon_high: float | None = None) -> torch.Tensor:
    """Per-token clipped objective (to be MAXIMISED); returns shape (B, T).

    DeepSeekMath eq. (3), inner term, with ratio_t = pi_theta(o_t | q, o_<t) / pi_old(o_t | q, o_<t):
        min( ratio_t * A_i,  clip(ratio_t, 1 - eps_low, 1 + eps_high) * A_i )
    eps_low = eps_high = epsilon in PPO/GRPO; DAPO eq. (10) ("clip-higher") decouples them, e.g. 0.2 / 0.28.
    """
    if epsilon <= 0 or (epsilon_high is not None and epsilon_high <= 0):
        raise ValueError(f"epsilon and epsilon_high must be > 0, got {epsilon!r}, {epsilon_high!r}")
    if old_logp.shape != logp.shape:
        raise ValueError(f"old_logp shape {tuple(old_logp.shape)} does not match logp shape {tuple(logp.shape)}")
    eps_high = epsilon if epsilon_high is None else epsilon_high
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + eps_high)
    return torch.min(ratio * adv, clipped * adv)


def aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str = "grpo",
              max_completion_length: int | None = None, num_tokens: float | None = None) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar; the four variants differ only here.

        grpo    (DeepSeekMath eq. 3):  1/B * sum_i 1/|o_i| * sum_t l_it      -- mean per sequence, then over sequences
        bnpo    (TRL):                 sum_i sum_t l_it / sum_i |o_i|        -- token mean over this batch
        dapo    (DAPO eq. 8):          sum_i sum_t l_it / sum_i |o_i|        -- token mean over the WHOLE batch; TRL
                                        divides by `num_items_in_batch` (all tokens across gradient-accumulation
                                        micro-batches). Pass that count as num_tokens; without it dapo == bnpo.
        dr_grpo (Dr. GRPO §3.2):       sum_i sum_t l_it / (B * L)            -- L a constant: max_completion_length
    The |o_i| of grpo is the reason long wrong answers are punished less per token (Dr. GRPO's length bias).
    """
    one_of("loss_type", loss_type, LOSS_TYPES)
    if mask.shape != per_token_loss.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the loss shape {tuple(per_token_loss.shape)}")
    mask = mask.to(per_token_loss.dtype)
    masked = per_token_loss * mask
    if loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dapo":
        denom = mask.sum() if num_tokens is None else torch.as_tensor(float(num_tokens))
        return masked.sum() / denom.clamp(min=1.0)
    # dr_grpo
    if max_completion_length is None or max_completion_length < 1:
        raise ValueError(f"max_completion_length must be a positive int for dr_grpo, got {max_completion_length!r}")
    return masked.sum() / (per_token_loss.size(0) * max_completion_length)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              ref_logp: torch.Tensor | None = None, beta: float = 0.0, epsilon: float = 0.2,
              epsilon_high: float | None = None, loss_type: str = "grpo",
              max_completion_length: int | None = None, num_tokens: float | None = None):
    """The GRPO loss (to MINIMISE) and a few statistics for the logs.

    DeepSeekMath eq. (3), negated, with the KL term inside the per-token sum (as in the paper and TRL):
        l_it = -min(ratio_t A_i, clip(ratio_t) A_i) + beta * D_KL_t
    then reduced by `aggregate(..., loss_type)`. beta = 0 (DAPO, Dr. GRPO, TRL's default) skips the reference model.

    logp, old_logp, ref_logp, mask: (B, T); advantages: (B,). With one update per rollout (mu = 1), pass
    old_logp = logp.detach(): the ratio is 1 but its gradient is the policy gradient.
    Returns (loss, stats) with stats = {"kl": masked-mean k3 KL (0 if beta == 0), "clip_frac": share of tokens clipped}.
    """
    if logp.dim() != 2:
        raise ValueError(f"logp must be (B, T), got shape {tuple(logp.shape)}")
    if mask.shape != logp.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match logp shape {tuple(logp.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must have shape ({logp.size(0)},), got {tuple(advantages.shape)}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    objective = clipped_surrogate(logp, old_logp, advantages, epsilon, epsilon_high)
    per_token_loss = -objective
    mask_f = mask.to(logp.dtype)
    n_tok = mask_f.sum().clamp(min=1.0)
    kl_mean = logp.new_zeros(())
    if beta > 0:
        if ref_logp is None:
            raise ValueError("ref_logp is required when beta > 0")
        kl = kl_k3(logp, ref_logp)
        per_token_loss = per_token_loss + beta * kl
        kl_mean = ((kl * mask_f).sum() / n_tok).detach()
    loss = aggregate(per_token_loss, mask_f, loss_type, max_completion_length, num_tokens)
    # a token is "clipped" when the clip branch is the active one and removes the gradient
    ratio = torch.exp(logp - old_logp).detach()
    eps_high = epsilon if epsilon_high is None else epsilon_high
    adv = advantages.unsqueeze(1)
    clipped = ((ratio < 1 - epsilon) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    clip_frac = (clipped.to(mask_f.dtype) * mask_f).sum() / n_tok
    return loss, {"kl": float(kl_mean), "clip_frac": float(clip_frac)}


# ----------------------------------------------------------------------------------------------------------------
# Rollouts and the training loop
# ----------------------------------------------------------------------------------------------------------------

def completion_mask(completion_ids: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """1.0 for each completion token up to and including the first eos_id, 0.0 after it (generate pads with eos)."""
    if eos_id is None:
        return torch.ones_like(completion_ids, dtype=torch.float32)
    is_eos = (completion_ids == eos_id).int()
    # tokens strictly after the first eos have cumsum(is_eos) - is_eos >= 1
    return ((is_eos.cumsum(-1) - is_eos) == 0).float()


@torch.no_grad()
def rollout(model, tokenizer, prompts: Sequence[str], group_size: int, max_new_tokens: int, temperature: float = 1.0,
            eos_id: int | None = None, generator: torch.Generator | None = None) -> dict:
    """Sample G completions per prompt (each group's samples consecutive, as group_advantages expects).

    Returns {"ids": (B, Tp + L) prompt+completion ids, "n_prompt": Tp, "mask": (B, L), "texts": B completion strings
    (up to and including eos)}. Prompts must all have the same number of tokens (the model has no padding mask).
    """
    from course_lib.model import generate

    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    enc = [tokenizer.encode(p) for p in prompts]
    if len({len(e) for e in enc}) != 1:
        raise ValueError("prompts must all encode to the same number of tokens")
    device = next(model.parameters()).device
    idx = torch.tensor(enc, dtype=torch.long, device=device).repeat_interleave(group_size, dim=0)
    ids = generate(model, idx, max_new_tokens, temperature=temperature, eos_id=eos_id, generator=generator)
    n_prompt = idx.shape[1]
    comp = ids[:, n_prompt:]
    mask = completion_mask(comp, eos_id)
    texts = [tokenizer.decode(row[:int(m.sum())].tolist()) for row, m in zip(comp.cpu(), mask.cpu())]
    return {"ids": ids, "n_prompt": n_prompt, "mask": mask, "texts": texts}


def completion_logprobs(model, ids: torch.Tensor, n_prompt: int) -> torch.Tensor:
    """log pi(o_t | q, o_<t) for every completion position: (B, L). Differentiable."""
    from course_lib.model import token_logprobs

    return token_logprobs(model, ids)[:, n_prompt - 1:]


@dataclass
class GRPOConfig:
    """Knobs of `grpo_train`. Defaults are the toy's (notebook 05), not DeepSeek's -- see the notebook for theirs."""
    steps: int = 200
    prompts_per_step: int = 8         # distinct questions per step
    group_size: int = 8               # G: samples per question
    max_new_tokens: int = 40          # also the constant L of dr_grpo
    temperature: float = 1.0          # rollout sampling temperature (R1-Zero: 1.0)
    lr: float = 1e-3
    beta: float = 0.0                 # KL coefficient (DeepSeekMath 0.04, R1 0.001, DAPO/Dr. GRPO 0)
    epsilon: float = 0.2
    epsilon_high: float | None = None  # DAPO clip-higher, e.g. 0.28
    loss_type: str = "grpo"
    scale_rewards: str = "group"
    num_iterations: int = 1           # mu: policy updates per rollout (DeepSeekMath §4.1, Algorithm 1)
    grad_clip: float | None = 1.0
    eval_every: int = 10
    time_budget_s: float | None = None  # stop once this much training time (evaluation excluded) has passed
    seed: int = 0

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a group of one has no baseline), got {self.group_size}")
        for name in ("steps", "prompts_per_step", "max_new_tokens", "num_iterations", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        one_of("loss_type", self.loss_type, LOSS_TYPES)
        one_of("scale_rewards", self.scale_rewards, SCALE_REWARDS)
        if self.lr <= 0 or self.beta < 0 or self.temperature <= 0:
            raise ValueError(f"lr and temperature must be > 0 and beta >= 0, got {self.lr}, {self.temperature}, {self.beta}")


def grpo_train(model, tokenizer, sample_prompts: Callable, reward_fns: dict, cfg: GRPOConfig | None = None,
               eos_id: int | None = None, evaluate: Callable | None = None, ref_model=None,
               progress: bool = True) -> dict:
    """Train `model` in place with GRPO; returns a history dict of lists.

    sample_prompts(n, rng) -> (prompts, answers): n prompt strings (same token length) and whatever the rewards need.
    reward_fns: {name: fn(completions, answers) -> list[float]}; the reward of a completion is their sum (R1-Zero:
        accuracy + format). A reward named "accuracy" is also logged as the training accuracy.
    evaluate(model) -> dict of floats, run before training, every cfg.eval_every steps and at the end (held-out
        accuracy etc.); its keys are logged with an "eval_" prefix next to "eval_step".
    ref_model: the frozen reference for the KL term; default a copy of the model as it is when training starts.
        Its k3 KL is always measured and logged (as in the notebook's plots), and only enters the loss if beta > 0.

    One step (DeepSeekMath Algorithm 1, with mu = cfg.num_iterations):
      1. sample prompts_per_step questions, G completions each, from the current policy (= pi_old)
      2. score them with the rule-based rewards, turn rewards into group-relative advantages
      3. take mu gradient steps on the clipped GRPO loss over this batch
    Logged per step: reward (and each reward fn), accuracy, length (completion tokens), kl, clip_frac, loss, time_s.
    """
    import random

    from tqdm.auto import tqdm

    cfg = cfg or GRPOConfig()
    if not reward_fns:
        raise ValueError("reward_fns must name at least one reward function")
    if ref_model is None:
        ref_model = copy.deepcopy(model)
    ref_model.eval()
    for p in ref_model.parameters():
        p.requires_grad_(False)
    device = next(model.parameters()).device
    rng = random.Random(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    hist: dict[str, list] = {k: [] for k in ("step", "reward", "accuracy", "length", "kl", "clip_frac", "loss",
                                             "time_s", "eval_step")}
    for name in reward_fns:
        hist[f"reward_{name}"] = []

    def run_eval(step):
        if evaluate is None:
            return
        hist["eval_step"].append(step)
        for k, v in evaluate(model).items():
            hist.setdefault(f"eval_{k}", []).append(float(v))

    run_eval(0)
    train_time = 0.0
    bar = tqdm(range(cfg.steps), desc="GRPO", disable=not progress, leave=False, mininterval=1.0)
    for step in bar:
        t0 = time.perf_counter()
        prompts, answers = sample_prompts(cfg.prompts_per_step, rng)
        answers_g = [a for a in answers for _ in range(cfg.group_size)]
        model.eval()
        roll = rollout(model, tokenizer, prompts, cfg.group_size, cfg.max_new_tokens, cfg.temperature, eos_id, gen)
        per_fn = {name: torch.tensor(fn(roll["texts"], answers_g), dtype=torch.float32, device=device)
                  for name, fn in reward_fns.items()}
        rewards = torch.stack(list(per_fn.values())).sum(0)
        adv = group_advantages(rewards, cfg.group_size, cfg.scale_rewards)
        ids, n_prompt, mask = roll["ids"], roll["n_prompt"], roll["mask"]
        with torch.no_grad():
            ref_logp = completion_logprobs(ref_model, ids, n_prompt)
            old_logp = completion_logprobs(model, ids, n_prompt) if cfg.num_iterations > 1 else None
        model.train()
        for _ in range(cfg.num_iterations):
            logp = completion_logprobs(model, ids, n_prompt)
            loss, stats = grpo_loss(logp, logp.detach() if old_logp is None else old_logp, adv, mask,
                                    ref_logp=ref_logp, beta=cfg.beta, epsilon=cfg.epsilon,
                                    epsilon_high=cfg.epsilon_high, loss_type=cfg.loss_type,
                                    max_completion_length=cfg.max_new_tokens)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
        model.eval()
        with torch.no_grad():   # k3 KL on the rollout tokens (policy as in the last inner iteration), even if beta = 0
            kl = (kl_k3(logp.detach(), ref_logp) * mask).sum() / mask.sum().clamp(min=1.0)
        train_time += time.perf_counter() - t0
        hist["step"].append(step + 1)
        hist["reward"].append(rewards.mean().item())
        for name, r in per_fn.items():
            hist[f"reward_{name}"].append(r.mean().item())
        hist["accuracy"].append(per_fn["accuracy"].mean().item() if "accuracy" in per_fn else math.nan)
        hist["length"].append(mask.sum(1).mean().item())
        hist["kl"].append(kl.item())
        hist["clip_frac"].append(stats["clip_frac"])
        hist["loss"].append(loss.item())
        hist["time_s"].append(train_time)
        last = step + 1 == cfg.steps or (cfg.time_budget_s is not None and train_time >= cfg.time_budget_s)
        if (step + 1) % cfg.eval_every == 0 or last:
            run_eval(step + 1)
        if step % 5 == 0:
            bar.set_postfix(reward=f"{hist['reward'][-1]:.2f}", len=f"{hist['length'][-1]:.1f}", refresh=False)
        if last:
            break
    return hist
