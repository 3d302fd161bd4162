"""Exercises of 04_mtp: multi-token prediction targets and loss, and the arithmetic of speculative decoding."""
import torch

from course_lib.checks.core import register

_G = torch.Generator().manual_seed(4)


@register(cases=[(torch.arange(10, 16), 1), (torch.arange(10, 16), 2), (torch.arange(3, 7), 0),
                 (torch.randint(0, 50, (2, 9), generator=_G), 1), (torch.randint(0, 50, (3, 12), generator=_G), 3)],
          hint=("Section 2: the model reads t_0..t_{N-1}. At position i, which token does depth k embed, which one "
                "does it predict, and at how many positions do both exist?",
                "V3 §2.2, Eq. 21 and 23: depth k at position i embeds t_{i+k} and predicts t_{i+k+1}, for the N - k "
                "positions i = 0..N-k-1; slice the last dim, so batches of windows work too.",
                "n = tokens.shape[-1]   # N + 1 tokens\n"
                "   return tokens[..., k:n - 1], tokens[..., k + 1:]"),
          wrong=[lambda t, k: (t[..., k:-1], t[..., k:-1]),                 # predicts the token it already sees
                 lambda t, k: (t[..., :-1], t[..., k + 1:]),                # embeds the current token, not t_{i+k}
                 lambda t, k: (t[..., k + 1:], t[..., k + 1:])])
def mtp_depth_targets(tokens, k):
    """(tokens depth k embeds, tokens depth k predicts) for a training sequence t_0..t_N."""
    n = tokens.shape[-1]
    return tokens[..., k:n - 1], tokens[..., k + 1:]


@register(cases=[(2.0, [2.5], 0.3), (1.8, [2.4, 2.9, 3.1], 0.1), (torch.tensor(2.2), torch.tensor([2.6, 3.0]), 0.3),
                 (3.0, [4.0, 5.0], 0.0)],
          hint=("Section 4: the D per-depth losses become one MTP loss before they join the main loss. Are they "
                "summed or averaged, and where does lambda come in?",
                "V3 Eq. (25): L = L_Main + (lambda / D) * sum_{k=1..D} L^k_MTP, where D = len(mtp_losses).",
                "return main_loss + lam / len(mtp_losses) * sum(mtp_losses)"),
          wrong=[lambda m, ls, lam: m + lam * sum(ls),                       # forgot to divide by D
                 lambda m, ls, lam: lam / len(ls) * sum(ls)])                # forgot the main loss
def mtp_total_loss(main_loss, mtp_losses, lam):
    """The training loss of a model with D MTP modules."""
    return main_loss + lam / len(mtp_losses) * sum(mtp_losses)


@register(cases=[(0.85, 1), (0.5, 3), (0.0, 2), (1.0, 2), (0.9, 4)],
          hint=("How many tokens does a verify pass yield when the first draft is rejected? And draft j adds a token "
                "only if which of the drafts before it were accepted?",
                "The pass always yields the main model's own token; draft j counts only if drafts 1..j are all "
                "accepted (probability a^j): E[tokens] = 1 + a + a^2 + ... + a^n, with n = n_draft "
                "(Leviathan et al. 2023, Eq. 1: (1 - a^(n+1)) / (1 - a) for a < 1).",
                "return sum(acceptance ** j for j in range(n_draft + 1))"),
          wrong=[lambda a, n: 1 + n * a, lambda a, n: n * a, lambda a, n: 1 + a])
def tokens_per_forward(acceptance, n_draft):
    """Expected tokens per main-model forward pass with n_draft drafted tokens, each accepted with prob. acceptance."""
    return sum(acceptance ** j for j in range(n_draft + 1))


@register(cases=[(5, [5, 7]), (4, [5, 7]), (9, [9, 9]), (0, [1, 0])],
          hint=("Section 6, step 3: which of the two verified tokens is always valid, and when was the second one "
                "computed from the right prefix?",
                "verified[0] is the main model's greedy token t_n (V3 §2.2, 'MTP in Inference'); if it equals the "
                "draft, verified[1] is valid too and both are committed, otherwise only [verified[0]].",
                "return list(verified) if verified[0] == draft else [verified[0]]"),
          wrong=[lambda d, v: [d] + v[1:], lambda d, v: list(v), lambda d, v: [v[0]]])
def accept_draft(draft, verified):
    """Greedy verification: the tokens committed after one pass over [last token, draft]."""
    return list(verified) if verified[0] == draft else [verified[0]]
