"""Exercises of 00_welcome: warm-ups that show how checked exercises work."""
import torch

from course_lib.checks.core import register


@register(kind="value",
          hint=("Which two parameter counts does the V3 report's abstract give, and which one is the part a single "
                "token uses? The answer is a fraction between 0 and 1.",
                "fraction = activated parameters / total parameters, with 37B activated of 671B in total "
                "(V3 report, abstract).",
                "v3_fraction = 37 / 671   # about 0.055"),
          wrong=[671 / 37, 0.37, 37])
def v3_active_fraction():
    return 37 / 671


@register(cases=[(torch.tensor([1.0, 2.0, 3.0]),), (torch.tensor([[0.5, -1.0], [4.0, 0.0]]),),
                 (torch.tensor([-3.0, 100.0, 2.5, 7.0]),)],
          hint=("Exponentiate, then divide by a sum: over which dimension? The inputs can be 2-D, and every row must "
                "sum to 1 on its own.",
                "softmax(x)_i = exp(x_i - max(x)) / sum_j exp(x_j - max(x)) along the last dim (dim=-1, "
                "keepdim=True); subtracting the row's max changes nothing but avoids overflow.",
                "z = (x - x.max(dim=-1, keepdim=True).values).exp()\n"
                "   return z / z.sum(dim=-1, keepdim=True)"),
          wrong=[lambda x: torch.exp(x) / torch.exp(x).sum(), lambda x: torch.sigmoid(x)])
def softmax_last_dim(x):
    z = x - x.max(dim=-1, keepdim=True).values
    return z.exp() / z.exp().sum(dim=-1, keepdim=True)
