"""Exercises of 05_grpo: group-relative advantages, the k3 KL estimator, a format reward."""
import torch

from course_lib.rewards import has_format
from course_lib.checks.core import register

_g = torch.Generator().manual_seed(5)


@register(cases=[(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4),
                 (torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0]), 4),
                 (torch.tensor([0.5, 1.0, 0.0, 1.0, 1.0, 0.0]), 2),
                 (torch.rand(12, generator=_g), 6)],
          hint="View the rewards as (n_groups, G); subtract each group's mean and divide by its std (torch.std, "
               "unbiased) + 1e-4. A group whose rewards are all equal gets advantage 0.",
          wrong=[lambda r, G: (r - r.mean()) / (r.std() + 1e-4),                       # whole batch as one group
                 lambda r, G: r - r.view(-1, G).mean(1).repeat_interleave(G)])        # no std scaling (Dr. GRPO)
def grpo_group_advantages(rewards, group_size):
    """DeepSeekMath §4.1.2: A_i = (r_i - mean(group)) / (std(group) + eps)."""
    grouped = rewards.view(-1, group_size)
    adv = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)
    return adv.view(-1)


@register(cases=[(torch.tensor([-1.0, -0.5, -2.0]), torch.tensor([-1.0, -1.5, -0.1])),
                 (torch.log(torch.rand(3, 5, generator=_g)), torch.log(torch.rand(3, 5, generator=_g)))],
          hint="With r = pi_ref / pi = exp(ref_logp - logp): k3 = r - log(r) - 1 (DeepSeekMath eq. 4), per token.",
          wrong=[lambda logp, ref: logp - ref,                                           # k1: unbiased but can be < 0
                 lambda logp, ref: torch.exp(logp - ref) - (logp - ref) - 1])            # ratio upside down
def grpo_k3_kl(logp, ref_logp):
    """Per-token k3 estimate of KL(pi || pi_ref) from the sampled tokens' log-probs."""
    log_r = ref_logp - logp
    return torch.exp(log_r) - log_r - 1


_FORMAT_CASES = ["<think>7+5=12</think><answer>12</answer>",
                 "<think></think><answer>3</answer>",
                 "  <think>x</think>\n<answer>1</answer>  ",
                 "<answer>12</answer>",
                 "<think>hm</think>",
                 "<answer>1</answer><think>x</think>",
                 "<think>x</think>and so<answer>1</answer>",
                 "<think>x</think><answer>1</answer> extra",
                 "<think><think>x</think></think><answer>1</answer>",
                 "<think>x</think><answer>1</answer><answer>2</answer>",
                 ""]


@register(cases=[(c,) for c in _FORMAT_CASES],
          hint="Strip the text; each of the four tags must occur exactly once, in the order <think> </think> <answer> "
               "</answer>; the text starts with <think>, ends with </answer>, and only whitespace sits between "
               "</think> and <answer>. Return 1.0 or 0.0.",
          wrong=[lambda t: 1.0 if "<think>" in t and "<answer>" in t else 0.0,
                 lambda t: 1.0 if __import__("re").fullmatch(r"\s*<think>.*</think>\s*<answer>.*</answer>\s*", t,
                                                              __import__("re").S) else 0.0])
def grpo_format_reward(text):
    """1.0 for '<think>...</think><answer>...</answer>' (R1 §2.2.2), else 0.0."""
    return 1.0 if has_format(text) else 0.0
