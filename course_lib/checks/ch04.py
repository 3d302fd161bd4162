"""Exercises of 04_mtp: multi-token prediction targets and loss, and the arithmetic of speculative decoding."""
import torch

from course_lib.checks.core import register

_G = torch.Generator().manual_seed(4)


@register(cases=[(torch.arange(10, 16), 1), (torch.arange(10, 16), 2), (torch.arange(3, 7), 0),
                 (torch.randint(0, 50, (2, 9), generator=_G), 1), (torch.randint(0, 50, (3, 12), generator=_G), 3)],
          hint="The model reads t_0..t_{N-1}. Depth k at position i embeds t_{i+k} and predicts t_{i+k+1}: "
               "slice the last dim as tokens[..., k:N-1] and tokens[..., k+1:].",
          wrong=[lambda t, k: (t[..., k:-1], t[..., k:-1]),                 # predicts the token it already sees
                 lambda t, k: (t[..., :-1], t[..., k + 1:]),                # embeds the current token, not t_{i+k}
                 lambda t, k: (t[..., k + 1:], t[..., k + 1:])])
def mtp_depth_targets(tokens, k):
    """(tokens depth k embeds, tokens depth k predicts) for a training sequence t_0..t_N."""
    n = tokens.shape[-1]
    return tokens[..., k:n - 1], tokens[..., k + 1:]


@register(cases=[(2.0, [2.5], 0.3), (1.8, [2.4, 2.9, 3.1], 0.1), (torch.tensor(2.2), torch.tensor([2.6, 3.0]), 0.3),
                 (3.0, [4.0, 5.0], 0.0)],
          hint="V3 eq. (25): L = L_main + (lambda / D) * sum_k L_MTP^k, where D is the number of MTP losses.",
          wrong=[lambda m, ls, lam: m + lam * sum(ls),                       # forgot to divide by D
                 lambda m, ls, lam: lam / len(ls) * sum(ls)])                # forgot the main loss
def mtp_total_loss(main_loss, mtp_losses, lam):
    """The training loss of a model with D MTP modules."""
    return main_loss + lam / len(mtp_losses) * sum(mtp_losses)


@register(cases=[(0.85, 1), (0.5, 3), (0.0, 2), (1.0, 2), (0.9, 4)],
          hint="The verify pass always yields one token; draft j adds one more only if drafts 1..j were all "
               "accepted (probability a^j): 1 + a + a^2 + ... + a^n.",
          wrong=[lambda a, n: 1 + n * a, lambda a, n: n * a, lambda a, n: 1 + a])
def tokens_per_forward(acceptance, n_draft):
    """Expected tokens per main-model forward pass with n_draft drafted tokens, each accepted with prob. acceptance."""
    return sum(acceptance ** j for j in range(n_draft + 1))


@register(cases=[(5, [5, 7]), (4, [5, 7]), (9, [9, 9]), (0, [1, 0])],
          hint="verified[0] is the main model's own next token. If it equals the draft, the second verified token "
               "is valid too; otherwise keep only verified[0].",
          wrong=[lambda d, v: [d] + v[1:], lambda d, v: list(v), lambda d, v: [v[0]]])
def accept_draft(draft, verified):
    """Greedy verification: the tokens committed after one pass over [last token, draft]."""
    return list(verified) if verified[0] == draft else [verified[0]]
