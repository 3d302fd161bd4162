"""Exercises of 05_grpo: group-relative advantages, the k3 KL estimator, a format reward."""
import torch

from course_lib.rewards import has_format
from course_lib.checks.core import register

_g = torch.Generator().manual_seed(5)


@register(cases=[(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4),
                 (torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0]), 4),
                 (torch.tensor([0.5, 1.0, 0.0, 1.0, 1.0, 0.0]), 2),
                 (torch.rand(12, generator=_g), 6)],
          hint=("GRPO's baseline is the group's own mean, scaled by the group's std (section 1, 'GRPO's baseline: the "
                "group'): which rewards form one group, and what should a group whose rewards are all equal get?",
                "DeepSeekMath §4.1.2: A_i = (r_i - mean(group)) / (std(group) + 1e-4) with the unbiased std "
                "(torch.std), each group being G consecutive rewards; same shape as `rewards`.",
                "g = rewards.view(-1, group_size)\n"
                "   return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)).view(-1)"),
          wrong=[lambda r, G: (r - r.mean()) / (r.std() + 1e-4),                       # whole batch as one group
                 lambda r, G: r - r.view(-1, G).mean(1).repeat_interleave(G)])        # no std scaling (Dr. GRPO)
def grpo_group_advantages(rewards, group_size):
    """DeepSeekMath §4.1.2: A_i = (r_i - mean(group)) / (std(group) + eps)."""
    grouped = rewards.view(-1, group_size)
    adv = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)
    return adv.view(-1)


@register(cases=[(torch.tensor([-1.0, -0.5, -2.0]), torch.tensor([-1.0, -1.5, -0.1])),
                 (torch.log(torch.rand(3, 5, generator=_g)), torch.log(torch.rand(3, 5, generator=_g)))],
          hint=("Which ratio does the k3 estimator use, pi_ref / pi_theta or its inverse? And how do you get that "
                "ratio from two log-probabilities?",
                "DeepSeekMath eq. (4), per token: with r = pi_ref / pi_theta = exp(ref_logp - logp), "
                "k3 = r - log(r) - 1, which is never negative.",
                "log_r = ref_logp - logp\n"
                "   return torch.exp(log_r) - log_r - 1"),
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
          hint=("What makes '<think>...</think><answer>...</answer>' well formed: how often may each tag occur, where "
                "must the text start and end, and what may sit between the two blocks?",
                "R1 §2.2.2's format reward: strip the text; each of the four tags exactly once, in the order <think> "
                "</think> <answer> </answer>; it starts with <think>, ends with </answer>, and only whitespace sits "
                "between </think> and <answer>. Return 1.0 or 0.0.",
                "import re; t = text.strip(); tags = ('<think>', '</think>', '<answer>', '</answer>')\n"
                "   return 1.0 if all(t.count(g) == 1 for g in tags) and "
                "re.fullmatch(r'<think>.*</think>\\s*<answer>.*</answer>', t, re.S) else 0.0"),
          wrong=[lambda t: 1.0 if "<think>" in t and "<answer>" in t else 0.0,
                 lambda t: 1.0 if __import__("re").fullmatch(r"\s*<think>.*</think>\s*<answer>.*</answer>\s*", t,
                                                              __import__("re").S) else 0.0])
def grpo_format_reward(text):
    """1.0 for '<think>...</think><answer>...</answer>' (R1 §2.2.2), else 0.0."""
    return 1.0 if has_format(text) else 0.0
