"""Exercises of 00_welcome: warm-ups that show how checked exercises work."""
import torch

from course_lib.checks.core import register


@register(kind="value", hint="Activated / total parameters of DeepSeek-V3: 37B of 671B (V3 report, abstract).",
          wrong=[671 / 37, 0.37, 37])
def v3_active_fraction():
    return 37 / 671


@register(cases=[(torch.tensor([1.0, 2.0, 3.0]),), (torch.tensor([[0.5, -1.0], [4.0, 0.0]]),),
                 (torch.tensor([-3.0, 100.0, 2.5, 7.0]),)],
          hint="softmax(x)_i = exp(x_i) / sum_j exp(x_j) along the last dim; subtract the max first for stability.",
          wrong=[lambda x: torch.exp(x) / torch.exp(x).sum(), lambda x: torch.sigmoid(x)])
def softmax_last_dim(x):
    z = x - x.max(dim=-1, keepdim=True).values
    return z.exp() / z.exp().sum(dim=-1, keepdim=True)
