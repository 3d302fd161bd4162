"""Exercises of 02_moe_routing: V3 gating, the MaxVio metric, one aux-loss-free bias update, group-limited routing."""
import torch

from course_lib.checks.core import register


def _g(seed):
    return torch.Generator().manual_seed(seed)


@register(cases=[(torch.tensor([[0.1, 2.0, -1.0, 0.5]]), 2),
                 (torch.tensor([[3.0, -2.0, 0.0], [0.2, 0.1, 0.3]]), 1),
                 (torch.randn(5, 8, generator=_g(0)), 3),
                 (torch.randn(4, 16, generator=_g(1)) * 3, 4)],
          hint="V3 eqs. (13)-(15): s = sigmoid(logits); keep the top-k s per row; divide them by their sum; "
               "every other expert gets gate 0. Return the full (tokens, experts) matrix.",
          wrong=[lambda logits, k: torch.zeros_like(logits).scatter(
                     1, logits.topk(k, -1).indices, logits.softmax(-1).gather(1, logits.topk(k, -1).indices)),
                 lambda logits, k: torch.zeros_like(logits).scatter(
                     1, logits.topk(k, -1).indices, logits.sigmoid().gather(1, logits.topk(k, -1).indices))])
def sigmoid_gating(logits, k):
    s = logits.sigmoid()
    idx = s.topk(k, dim=-1).indices
    top = s.gather(1, idx)
    return torch.zeros_like(s).scatter(1, idx, top / top.sum(-1, keepdim=True))


@register(cases=[(torch.tensor([4.0, 4.0, 4.0, 4.0]),), (torch.tensor([10.0, 2.0, 4.0, 0.0]),),
                 (torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),),
                 (torch.randint(0, 50, (16,), generator=_g(2)).float(),)],
          hint="MaxVio = max(load) / mean(load) - 1: 0 when perfectly balanced.",
          wrong=[lambda load: (load.max() / load.mean()).item(),
                 lambda load: (load.max() - load.mean()).item(),
                 lambda load: (load.max() / load.min() - 1).item()])
def maxvio(load):
    return (load.max() / load.mean() - 1).item()


@register(kind="value",
          hint="mean load = 5; overloaded experts (load > 5) lose gamma, underloaded ones gain gamma: "
               "b_i + gamma * sign(mean - load_i).",
          wrong=[[-0.01, 0.03, -0.02, 0.01], [0.02, -0.02, 0.02, -0.01], [0.01, 0.01, 0.0, 0.0]])
def bias_after_one_update():
    # bias [0, 0.02, -0.01, 0], load [3, 9, 2, 6], gamma 0.01
    return [0.01, 0.01, 0.0, -0.01]


@register(kind="value",
          hint="Group score = sum of the group's two highest affinities; keep the 2 best groups, then take the "
               "top-2 experts inside them. Answer with the expert indices, sorted ascending.",
          wrong=[[0, 4], [0, 2], [2, 4]])
def group_limited_experts():
    # affinities of 8 experts in 4 groups of 2: [0.9, 0.05 | 0.5, 0.5 | 0.7, 0.6 | 0.2, 0.3]
    # group scores 0.95, 1.0, 1.3, 0.5 -> keep groups 2 and 1 -> candidates {2, 3, 4, 5}
    # top-2 among 0.5, 0.5, 0.7, 0.6 -> experts 4 and 5 (the best single expert, 0, is not allowed)
    return [4, 5]
