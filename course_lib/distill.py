"""Distillation at toy scale: rejection sampling, sequence-level distillation data, token-level logit distillation.

Papers:
  * DeepSeek-R1 (arXiv 2501.12948) §2.3.3: rejection sampling -- sample several responses per prompt from the RL
    checkpoint, keep only the correct (and readable) ones, mix them with non-reasoning data and fine-tune on the mix.
  * DeepSeek-R1 §2.4 and §4.1: the R1-Distill models are small open models fine-tuned (SFT only, no RL) on the same
    ~800k samples -- "sequence-level" distillation: the student imitates the teacher's sampled text.
  * Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (arXiv 1503.02531) §2: "token-level" logit
    distillation -- the student matches the teacher's whole next-token distribution, softened by a temperature T,
    with the loss multiplied by T^2.
  * DeepSeek-V4 (model card, huggingface.co/deepseek-ai/DeepSeek-V4-Pro, and technical report, post-training): domain
    experts are trained separately (SFT, then RL with GRPO) and merged into one model by on-policy distillation --
    the student samples, every teacher scores the sampled tokens, and the loss is the reverse KL over the full
    vocabulary (`reverse_kl`, `on_policy_distill`; GKD, Agarwal et al., arXiv 2306.13649).

Data convention (the same as `arith.pretrain_batch` and `train.train_lm`): a sample is a (prompt, completion) pair of
strings; a batch is (x, y) next-token pairs where y is -100 on prompt tokens and padding, so only the completion is
learned.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from course_lib.kit.validate import in_unit_interval


# ----------------------------------------------------------------------------------------------------------------
# Rejection sampling (R1 §2.3.3)
# ----------------------------------------------------------------------------------------------------------------

def rejection_filter(completions: Sequence[str], answers: Sequence, reward_fns: dict,
                     thresholds: dict | None = None) -> list[bool]:
    """Which completions to keep: those whose every reward reaches its threshold (default 1.0 = full marks).

    reward_fns: {name: fn(completions, answers) -> list[float]}, the same convention as `grpo.grpo_train`, so the
    rewards that trained the policy also decide what it is allowed to teach. R1 §2.3.3 keeps "only the correct
    responses" and drops chain-of-thought with mixed languages: accuracy and language consistency, both at 1.0.
    """
    if isinstance(completions, str):
        raise ValueError("completions must be a list of strings, not a single string")
    completions, answers = list(completions), list(answers)
    if len(answers) != len(completions):
        raise ValueError(f"answers has {len(answers)} entries for {len(completions)} completions")
    if not reward_fns:
        raise ValueError("reward_fns must name at least one reward function")
    thresholds = dict(thresholds or {})
    unknown = set(thresholds) - set(reward_fns)
    if unknown:
        raise ValueError(f"thresholds names rewards that reward_fns lacks: {sorted(unknown)}")
    keep = [True] * len(completions)
    for name, fn in reward_fns.items():
        scores = list(fn(completions, answers))
        if len(scores) != len(completions):
            raise ValueError(f"reward {name!r} returned {len(scores)} scores for {len(completions)} completions")
        bar = thresholds.get(name, 1.0)
        keep = [k and s >= bar for k, s in zip(keep, scores)]
    return keep


@torch.no_grad()
def rejection_sample(model, tokenizer, prompts: Sequence[str], answers: Sequence, k: int, reward_fns: dict,
                     max_new_tokens: int, thresholds: dict | None = None, temperature: float = 1.0,
                     eos_id: int | None = None, generator: torch.Generator | None = None) -> dict:
    """Sample k completions per prompt from `model` and keep those that pass `rejection_filter`.

    Returns {"samples": kept (prompt, completion) pairs, "accept_rate": kept / sampled,
             "solved": share of prompts with at least one kept completion, "n_sampled": len(prompts) * k}.
    Prompts must encode to the same number of tokens (`grpo.rollout` batches them without padding).
    """
    from course_lib.grpo import rollout

    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if len(prompts) != len(answers):
        raise ValueError(f"answers has {len(answers)} entries for {len(prompts)} prompts")
    roll = rollout(model, tokenizer, list(prompts), k, max_new_tokens, temperature, eos_id, generator)
    prompts_k = [p for p in prompts for _ in range(k)]       # rollout keeps each prompt's k samples together
    answers_k = [a for a in answers for _ in range(k)]
    keep = rejection_filter(roll["texts"], answers_k, reward_fns, thresholds)
    samples = [(p, c) for p, c, ok in zip(prompts_k, roll["texts"], keep) if ok]
    solved = [any(keep[i * k:(i + 1) * k]) for i in range(len(prompts))]
    return {"samples": samples, "accept_rate": sum(keep) / len(keep), "solved": sum(solved) / len(solved),
            "n_sampled": len(keep)}


# ----------------------------------------------------------------------------------------------------------------
# Sequence-level distillation data (R1 §2.4: plain SFT on the teacher's samples)
# ----------------------------------------------------------------------------------------------------------------

def sequence_batch(tokenizer, samples: Sequence[tuple[str, str]], pad_id: int,
                   device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """All (prompt, completion) samples as one padded next-token batch (x, y), prompt and padding masked with -100.

    For a sequence s = prompt + completion, x = s[:-1] and y = s[1:], and y is kept only where it is a completion
    token: SFT maximises log p(completion | prompt) and never learns to write prompts.
    """
    if len(samples) == 0:
        raise ValueError("samples must hold at least one (prompt, completion) pair")
    rows, starts = [], []
    for item in samples:
        if len(item) != 2 or not all(isinstance(s, str) for s in item):
            raise ValueError(f"each sample must be a (prompt, completion) pair of strings, got {item!r}")
        prompt_ids, comp_ids = tokenizer.encode(item[0]), tokenizer.encode(item[1])
        if not prompt_ids or not comp_ids:
            raise ValueError(f"prompt and completion must both be non-empty, got {item!r}")
        rows.append(prompt_ids + comp_ids)
        starts.append(len(prompt_ids))
    T = max(len(r) for r in rows) - 1
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (r, n_prompt) in enumerate(zip(rows, starts)):
        r = torch.tensor(r)
        x[i, :len(r) - 1] = r[:-1]
        # position t predicts token t+1; the first completion token is predicted at position n_prompt - 1
        y[i, n_prompt - 1:len(r) - 1] = r[n_prompt:]
    return x.to(device), y.to(device)


def batch_sampler(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int = 0) -> Callable:
    """get_batch(step) -> (x, y) for `train.train_lm`: seeded random rows, a fresh permutation every epoch."""
    if x.shape != y.shape:
        raise ValueError(f"x shape {tuple(x.shape)} and y shape {tuple(y.shape)} differ")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    n = x.shape[0]
    per_epoch = max(1, n // batch_size)
    gen = torch.Generator().manual_seed(seed)
    perms: dict[int, torch.Tensor] = {}

    def get_batch(step: int):
        epoch, i = divmod(step, per_epoch)
        while epoch not in perms:                  # draw permutations in order, so step k always gets the same rows
            perms[len(perms)] = torch.randperm(n, generator=gen)
        rows = perms[epoch][i * batch_size:(i + 1) * batch_size] if n >= batch_size else perms[epoch]
        rows = rows.to(x.device)
        return x[rows], y[rows]

    return get_batch


# ----------------------------------------------------------------------------------------------------------------
# Token-level logit distillation (Hinton et al. 2015, §2)
# ----------------------------------------------------------------------------------------------------------------

def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(p_teacher^T || p_student^T), averaged over the positions where mask is true.

    Hinton et al. §2: soft targets p_i = exp(z_i / T) / sum_j exp(z_j / T). Per position
        KL(p || q) = sum_i p_i (log p_i - log q_i)            (forward KL: the teacher's distribution first)
    and the soft-target gradients scale as 1/T^2, so the loss is multiplied by T^2 to keep its size comparable
    across temperatures (and with a hard-label cross-entropy it may be mixed with).
    Logits: (..., V); mask: (...) bool or 0/1, default all positions.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher_logits shape {tuple(teacher_logits.shape)} does not match student_logits "
                         f"shape {tuple(student_logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    # sum_i p_i (log p_i - log q_i), one value per position
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    if mask is None:
        mask = torch.ones_like(kl)
    if mask.shape != kl.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the positions {tuple(kl.shape)}")
    mask = mask.to(kl.dtype)
    return temperature ** 2 * (kl * mask).sum() / mask.sum().clamp(min=1.0)


def kd_loss_fn(teacher, temperature: float = 2.0, alpha: float = 1.0) -> Callable:
    """A `train.train_lm` loss_fn: alpha * kd_loss + (1 - alpha) * cross-entropy on the hard labels.

    Hinton §2 mixes both objectives ("a weighted average of two different objective functions"); alpha = 1 is pure
    logit distillation. The teacher is frozen and scores the same (x, y) the student sees: only positions with a
    label (y != -100, the completion) count.
    """
    in_unit_interval("alpha", alpha)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    teacher.eval()

    def loss_fn(model, x, y):
        with torch.no_grad():
            t_logits = teacher(x).logits
        out = model(x, y)
        kd = kd_loss(out.logits, t_logits, temperature, mask=y != -100)
        loss = alpha * kd + (1.0 - alpha) * out.loss
        return loss, {"kd": kd.item(), "ce": out.loss.item()}

    return loss_fn


# ----------------------------------------------------------------------------------------------------------------
# A picture of the temperature (the notebook's widget calls this pure function)
# ----------------------------------------------------------------------------------------------------------------

def temperature_figure(logits, temperature: float = 2.0, labels: Sequence[str] | None = None):
    """Bars of softmax(logits / T) next to softmax(logits): what the student is asked to match at temperature T.

    Hinton §2: a higher T reveals the teacher's "dark knowledge" -- how much more likely one wrong token is than
    another -- which the one-hot label and the T = 1 distribution hide.
    """
    from course_lib.kit.style import COLORS, subplots

    logits = torch.as_tensor(logits, dtype=torch.float32)
    if logits.dim() != 1 or logits.numel() < 2:
        raise ValueError(f"logits must be a 1-D tensor of at least 2 scores, got shape {tuple(logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    labels = [str(i) for i in range(logits.numel())] if labels is None else list(labels)
    if len(labels) != logits.numel():
        raise ValueError(f"labels has {len(labels)} entries for {logits.numel()} logits")
    p1, pT = torch.softmax(logits, -1), torch.softmax(logits / temperature, -1)
    fig, ax = subplots(width=7.5, height=3.0)
    pos = torch.arange(logits.numel()).float()
    ax.bar(pos - 0.2, p1, width=0.4, color=COLORS["grey"], label="T = 1")
    ax.bar(pos + 0.2, pT, width=0.4, color=COLORS["orange"], label=f"T = {temperature:g}")
    ax.set_xticks(pos.tolist(), labels)
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    entropy = -(pT * pT.clamp_min(1e-12).log()).sum().item()
    ax.set_title(f"teacher's next-token distribution softened by T (entropy at T: {entropy:.2f} nats)")
    ax.legend()
    return fig


# ----------------------------------------------------------------------------------------------------------------
# On-policy distillation (DeepSeek-V4's post-training; Agarwal et al. 2024, GKD)
# ----------------------------------------------------------------------------------------------------------------

def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p_student || p_teacher) over the full vocabulary, averaged over the positions where mask is true.

    Per position, with q the student's and p the teacher's next-token distribution:
        KL(q || p) = sum_v q_v (log q_v - log p_v)          (reverse KL: the student's distribution first)
    It is mode-seeking: the student is punished for putting mass where the teacher has little, not for missing some
    of the teacher's modes. DeepSeek-V4 (model card and report, post-training) distils its domain experts into one
    model with "reverse KL" full-vocabulary logit distillation on the student's own samples; GKD (Agarwal et al.,
    arXiv 2306.13649, §3) is the same objective with a general divergence. Logits: (..., V); mask: (...).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher_logits shape {tuple(teacher_logits.shape)} does not match student_logits "
                         f"shape {tuple(student_logits.shape)}")
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    # sum_v q_v (log q_v - log p_v), one value per position
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    if mask is None:
        mask = torch.ones_like(kl)
    if mask.shape != kl.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the positions {tuple(kl.shape)}")
    mask = mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp(min=1.0)


def on_policy_distill(student, teacher, tokenizer, sample_prompts: Callable, steps: int, prompts_per_step: int = 8,
                      group_size: int = 4, max_new_tokens: int = 40, lr: float = 3e-4, temperature: float = 1.0,
                      eos_id: int | None = None, seed: int = 0, grad_clip: float | None = 1.0,
                      progress: bool = True, desc: str = "OPD") -> dict:
    """Train `student` in place by on-policy distillation; returns a history dict of lists.

    One step:
      1. the student samples group_size completions for each of prompts_per_step prompts (`grpo.rollout`, the same
         sampling as GRPO: prompts_per_step * group_size sequences per step)
      2. the frozen teacher scores every sampled position: its full next-token distribution p(. | q, o_<t)
      3. one AdamW step on `reverse_kl(student, teacher)` averaged over the completion tokens (prompt and the
         padding after the end token masked out)
    No reward and no advantage: the teacher's distribution is a dense, per-token signal. The samples are treated as
    data (no gradient through the sampling), as in GKD (arXiv 2306.13649, Algorithm 1).
    sample_prompts(n, rng) -> (prompts, answers), the `grpo_train` convention (answers are not used).
    temperature: the sampling temperature only; the KL compares the two distributions at temperature 1.
    Logged per step: loss (the reverse KL), length (completion tokens), time_s.
    """
    import random
    import time

    from tqdm.auto import tqdm

    from course_lib.grpo import rollout

    for name, v in (("steps", steps), ("prompts_per_step", prompts_per_step), ("group_size", group_size),
                    ("max_new_tokens", max_new_tokens)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not lr > 0 or not temperature > 0:
        raise ValueError(f"lr and temperature must be > 0, got lr={lr!r}, temperature={temperature!r}")
    if teacher is student:
        raise ValueError("teacher must be a different model from student (a frozen copy at least)")
    teacher.eval()
    device = next(student.parameters()).device
    rng = random.Random(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    hist: dict[str, list] = {"step": [], "loss": [], "length": [], "time_s": []}
    elapsed = 0.0
    for step in tqdm(range(steps), desc=desc, disable=not progress, leave=False, mininterval=1.0):
        t0 = time.perf_counter()
        prompts, _ = sample_prompts(prompts_per_step, rng)
        student.eval()
        roll = rollout(student, tokenizer, prompts, group_size, max_new_tokens, temperature, eos_id, gen)
        ids, n_prompt, mask = roll["ids"], roll["n_prompt"], roll["mask"]
        # position t's logits predict token t + 1: the completion tokens are predicted at n_prompt - 1 .. T - 2
        with torch.no_grad():
            t_logits = teacher(ids).logits[:, n_prompt - 1:-1]
        student.train()
        s_logits = student(ids).logits[:, n_prompt - 1:-1]
        loss = reverse_kl(s_logits, t_logits, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
        opt.step()
        elapsed += time.perf_counter() - t0
        hist["step"].append(step + 1)
        hist["loss"].append(loss.item())
        hist["length"].append(mask.sum(1).mean().item())
        hist["time_s"].append(elapsed)
    student.eval()
    return hist
