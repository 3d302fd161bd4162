"""Exercises of 06_distillation: the rejection-sampling filter, the KD loss at temperature T, the R1 data mix,
the reverse KL of on-policy distillation."""
import torch
import torch.nn.functional as F

from course_lib.rewards import accuracy_reward, has_format, language_consistency
from course_lib.checks.core import register

_g = torch.Generator().manual_seed(6)

_RS_CASES = [
    (["<think>8 plus 7 plus 0 is 15</think><answer>15</answer>",
      "<think>8 plus 7 plus 0 is 15</think><answer>16</answer>",
      "<think>8加7加0得15</think><answer>15</answer>",
      "<think>8 plus 7加0 is 15</think><answer>15</answer>",
      "<answer>15</answer>",
      "<think></think><answer>15</answer>"], [15] * 6),
    (["<think></think><answer>1998</answer><answer>1998</answer>",
      "  <think>9 plus 9 plus 0 is 18</think> <answer> 1998 </answer>  ",
      "<think>x</think><answer>1998</answer>tail",
      ""], [1998] * 4),
]


@register(cases=_RS_CASES,
          hint="Keep completion i only if all three hold: accuracy_reward gives 1.0, has_format(text) is True, and "
               "language_consistency(text, 'en') == 1.0 (no Chinese word in the reasoning). Return a list of bools.",
          wrong=[lambda cs, ans: [r == 1.0 for r in accuracy_reward(cs, ans)],                       # correct only
                 lambda cs, ans: [r == 1.0 and has_format(c) for c, r in zip(cs, accuracy_reward(cs, ans))],
                 lambda cs, ans: [r == 1.0 and language_consistency(c, "en") > 0                     # any English
                                  for c, r in zip(cs, accuracy_reward(cs, ans))]])
def distill_rejection_filter(completions, answers):
    """R1 §2.3.3: keep only correct, well-formed responses whose reasoning is in one (the target) language."""
    acc = accuracy_reward(completions, answers)
    return [a == 1.0 and has_format(c) and language_consistency(c, "en") == 1.0 for c, a in zip(completions, acc)]


@register(cases=[(torch.log(torch.tensor([[0.25, 0.5, 0.25]])), torch.log(torch.tensor([[0.5, 0.25, 0.25]])), 1.0),
                 (torch.randn(4, 7, generator=_g), torch.randn(4, 7, generator=_g), 2.0),
                 (torch.randn(2, 3, 5, generator=_g), torch.randn(2, 3, 5, generator=_g), 4.0),
                 (torch.randn(3, 6, generator=_g) * 5, torch.randn(3, 6, generator=_g) * 5, 0.5)],
          hint="Divide BOTH logits by T, take log_softmax of each; per position sum p_t * (log p_t - log p_s) over the "
               "vocabulary (teacher first: forward KL), average over positions, multiply by T**2.",
          wrong=[lambda s, t, T: (F.softmax(t / T, -1) * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1)))
                 .sum(-1).mean(),                                                                   # no T^2
                 lambda s, t, T: T ** 2 * (F.softmax(s / T, -1) * (F.log_softmax(s / T, -1) - F.log_softmax(t / T, -1)))
                 .sum(-1).mean(),                                                                   # reverse KL
                 lambda s, t, T: T ** 2 * (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1)))
                 .sum(-1).mean()])                                                                  # T ignored
def distill_kd_loss(student_logits, teacher_logits, T):
    """Hinton et al. (arXiv 1503.02531) §2: T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), mean over positions."""
    log_p = F.log_softmax(teacher_logits / T, dim=-1)
    log_q = F.log_softmax(student_logits / T, dim=-1)
    return T ** 2 * (log_p.exp() * (log_p - log_q)).sum(-1).mean()


@register(kind="value", hint="R1 §2.3.3: about 600k reasoning samples plus about 200k non-reasoning samples.",
          wrong=[600_000, 200_000, 1_000_000],
          compare=lambda expected, got: isinstance(got, (int, float)) and abs(got - expected) <= 0.05 * expected)
def distill_r1_sft_samples():
    """How many samples (approximately) were in the SFT set used for R1's second stage and for the R1-Distill models?"""
    return 800_000


# ---------------------------------------------------------------- on-policy distillation (section 9)
_g6opd = torch.Generator().manual_seed(66)


@register(cases=[(torch.tensor([[0.75, 0.25]]).log(), torch.tensor([[0.5, 0.5]]).log()),
                 (torch.randn(5, 7, generator=_g6opd), torch.randn(5, 7, generator=_g6opd)),
                 (torch.randn(3, 4, generator=_g6opd) * 4, torch.randn(3, 4, generator=_g6opd) * 4),
                 (torch.randn(6, 3, generator=_g6opd), torch.randn(6, 3, generator=_g6opd))],
          hint=("Reverse KL: the student's distribution comes first and weights the log-ratio.",
                "per position KL(q || p) = sum_v q_v (log q_v - log p_v), q = student, p = teacher; then the mean "
                "over positions (GKD, arXiv 2306.13649, §3).",
                "log_q = F.log_softmax(student_logits, -1); log_p = F.log_softmax(teacher_logits, -1); "
                "return (log_q.exp() * (log_q - log_p)).sum(-1).mean()"),
          wrong=[lambda s, t: (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1).mean(),
                 lambda s, t: (F.softmax(s, -1) * (F.log_softmax(s, -1) - F.log_softmax(t, -1))).sum(),
                 lambda s, t: (F.softmax(s, -1) * (s - t)).sum(-1).mean()])
def opd_reverse_kl(student_logits, teacher_logits):
    """On-policy distillation's per-token loss: mean over positions of KL(student || teacher), full vocabulary."""
    log_q = F.log_softmax(student_logits, dim=-1)
    log_p = F.log_softmax(teacher_logits, dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1).mean()
