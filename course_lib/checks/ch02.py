"""Exercises of 02_moe_routing: V3 gating, the MaxVio metric, one aux-loss-free bias update, group-limited routing."""
import torch

from course_lib.checks.core import register


def _g(seed):
    return torch.Generator().manual_seed(seed)


@register(cases=[(torch.tensor([[0.1, 2.0, -1.0, 0.5]]), 2),
                 (torch.tensor([[3.0, -2.0, 0.0], [0.2, 0.1, 0.3]]), 1),
                 (torch.randn(5, 8, generator=_g(0)), 3),
                 (torch.randn(4, 16, generator=_g(1)) * 3, 4)],
          hint=("Section 2 sets V2 and V3 side by side: which function turns V3's logits u_t^T e_i into affinities "
                "s_{i,t}, and over which experts are the gates normalised so that they sum to 1?",
                "V3 §2.1.2, eqs. (13)-(15): s = Sigmoid(logits); g' = s for the top-k of each row, 0 elsewhere; "
                "g = g' / sum_j g'_j. Return the full (tokens, experts) matrix.",
                "s = logits.sigmoid(); idx = s.topk(k, dim=-1).indices; top = s.gather(1, idx)\n"
                "   return torch.zeros_like(s).scatter(1, idx, top / top.sum(-1, keepdim=True))"),
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
          hint=("MaxVio compares the busiest expert with a fair share: what is the fair share of one expert, and "
                "what should a perfectly balanced load give?",
                "Section 6: MaxVio = max_i load_i / mean(load) - 1 (Wang et al. 2024, arXiv 2408.15664); 0 when "
                "perfectly balanced. Return a Python float.",
                "return (load.max() / load.mean() - 1).item()"),
          wrong=[lambda load: (load.max() / load.mean()).item(),
                 lambda load: (load.max() - load.mean()).item(),
                 lambda load: (load.max() / load.min() - 1).item()])
def maxvio(load):
    return (load.max() / load.mean() - 1).item()


@register(kind="value",
          hint=("Which experts got more than the average load and which less? The bias should make an overloaded "
                "expert less likely to be chosen next step, and only the sign of the gap matters.",
                "V3 §2.1.2, eq. 16's update (section 6 (b)): b_i <- b_i + gamma * sign(mean(load) - load_i), "
                "with mean(load) = (3 + 9 + 2 + 6) / 4 = 5 and gamma = 0.01.",
                "new_bias = [0 + 0.01, 0.02 - 0.01, -0.01 + 0.01, 0 - 0.01]   # loads 3 < 5, 9 > 5, 2 < 5, 6 > 5"),
          wrong=[[-0.01, 0.03, -0.02, 0.01], [0.02, -0.02, 0.02, -0.01], [0.01, 0.01, 0.0, 0.0]])
def bias_after_one_update():
    # bias [0, 0.02, -0.01, 0], load [3, 9, 2, 6], gamma 0.01
    return [0.01, 0.01, 0.0, -0.01]


@register(kind="value",
          hint=("Section 4 routes in two stages: first the groups, then the experts inside them. How is a group "
                "scored, and can the best single expert (0, affinity 0.9) lose?",
                "V3 §2.1.2 'Node-Limited Routing', as the released code does it: group score = sum of the group's two "
                "highest affinities; keep the topk_group = 2 best groups; take the top-2 experts among their members. "
                "Answer with the expert indices, sorted ascending.",
                "Group scores 0.9 + 0.05 = 0.95, 0.5 + 0.5 = 1.0, 0.7 + 0.6 = 1.3, 0.2 + 0.3 = 0.5: keep groups 2 and "
                "1 (experts 2, 3, 4, 5); top-2 of 0.5, 0.5, 0.7, 0.6 -> chosen_experts = [4, 5]"),
          wrong=[[0, 4], [0, 2], [2, 4]])
def group_limited_experts():
    # affinities of 8 experts in 4 groups of 2: [0.9, 0.05 | 0.5, 0.5 | 0.7, 0.6 | 0.2, 0.3]
    # group scores 0.95, 1.0, 1.3, 0.5 -> keep groups 2 and 1 -> candidates {2, 3, 4, 5}
    # top-2 among 0.5, 0.5, 0.7, 0.6 -> experts 4 and 5 (the best single expert, 0, is not allowed)
    return [4, 5]
