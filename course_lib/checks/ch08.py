"""Exercises of 08_deep_training: hyper-connections, Sinkhorn-Knopp, Newton-Schulz, Muon's scale, hash routing,
and (written by the Engram / on-policy distillation helper) an Engram n-gram hash, the OPD loss, Engram's rows per token."""
import math

import torch
import torch.nn.functional as F

from course_lib.checks.core import register

_G = torch.Generator().manual_seed(8)


@register(cases=[(torch.tensor([[2.0, 1.0], [1.0, 1.0]]),), (torch.rand(3, 3, generator=_G) + 0.1,),
                 (torch.rand(4, 4, generator=_G) + 0.01,), (torch.ones(2, 2),)],
          hint="Sinkhorn-Knopp step (mHC; V4 §2.2): first divide every column by its sum (T_c), "
               "then every row by its sum (T_r). "
               "Columns are dim 0 (m.sum(0)), rows dim 1 (m.sum(1, keepdim=True)).",
          wrong=[lambda m: m / m.sum(1, keepdim=True) / (m / m.sum(1, keepdim=True)).sum(0),   # rows first
                 lambda m: m / m.sum(0),                                                       # columns only
                 lambda m: m / m.sum()])                                                       # one global sum
def sinkhorn_step(m):
    """One Sinkhorn-Knopp iteration T_r(T_c(m)) on a positive square matrix."""
    m = m / m.sum(0, keepdim=True)
    return m / m.sum(1, keepdim=True)


@register(cases=[(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([3.0, -1.0]),
                  torch.tensor([[0.5, 0.5], [0.5, 0.5]]), torch.tensor([1.0, 2.0])),
                 (torch.randn(3, 4, generator=_G), torch.randn(4, generator=_G), torch.rand(3, 3, generator=_G),
                  torch.rand(3, generator=_G))],
          hint="HC update (V4 §2.2): X_{l+1} = B_l X_l + C_l F_l(A_l X_l). Here streams X is (n, d), the layer output "
               "y = F(A X) is (d,), mix B is (n, n), post C is (n,): B @ X + C[:, None] * y[None, :].",
          wrong=[lambda x, y, b, c: b.T @ x + c[:, None] * y[None, :],                 # B transposed
                 lambda x, y, b, c: x + c[:, None] * y[None, :],                       # plain residual, no mixing
                 lambda x, y, b, c: b @ x + y[None, :]])                               # forgot C
def hc_update(streams, layer_output, mix, post):
    """The n residual streams after one hyper-connected sub-layer."""
    return mix @ streams + post[:, None] * layer_output[None, :]


@register(cases=[(torch.tensor([[0.6, 0.0], [0.0, 0.3]]), (3.4445, -4.7750, 2.0315)),
                 (torch.randn(3, 5, generator=_G) / 4, (2.0, -1.5, 0.5)),
                 (torch.randn(4, 2, generator=_G) / 3, (3.4445, -4.7750, 2.0315))],
          hint="Newton-Schulz step (V4 §2.4, as quoted): M_k = a M + b (M M^T) M + c (M M^T)^2 M, with A = M @ M.T.",
          wrong=[lambda x, abc: abc[0] * x + abc[1] * (x @ x.T) @ x + abc[2] * (x @ x.T) @ x,   # (M M^T) not squared
                 lambda x, abc: abc[0] * x + abc[1] * x ** 3 + abc[2] * x ** 5,  # element-wise powers
                 lambda x, abc: abc[0] * x + abc[1] * (x @ x.T) @ x])             # dropped the fifth-order term
def newton_schulz_step(x, abc):
    """One Newton-Schulz step with coefficients abc = (a, b, c)."""
    a, b, c = abc
    gram = x @ x.T
    return a * x + b * gram @ x + c * gram @ gram @ x


@register(cases=[(64, 256, 0.18), (4096, 1024, 0.18), (10, 10, 0.2), (3, 12, 1.0)],
          hint="An n x m matrix with orthonormal rows (or columns) has RMS 1/sqrt(max(n, m)). To make the update's "
               "RMS equal gamma, multiply by gamma * sqrt(max(n, m)) (V4 Algorithm 1, line 6).",
          wrong=[lambda n, m, g: g * math.sqrt(min(n, m)), lambda n, m, g: g * math.sqrt(n * m),
                 lambda n, m, g: max(1, n / m) ** 0.5])
def muon_scale(n, m, gamma):
    """The factor Muon multiplies the orthogonalised update of an n x m weight by."""
    return gamma * math.sqrt(max(n, m))


@register(cases=[(torch.tensor([[0, 1], [2, 3], [1, 2]]), torch.tensor([2, 0, 0, 1])),
                 (torch.randint(0, 8, (50, 1), generator=_G), torch.randint(0, 50, (3, 7), generator=_G))],
          hint="Hash routing looks the token id up in the frozen table: table[input_ids]. The hidden state plays "
               "no part in the choice.",
          wrong=[lambda t, ids: t[ids % t.shape[1]], lambda t, ids: t[:, 0][ids],
                 lambda t, ids: ids.unsqueeze(-1) % t.max().add(1)])
def hash_experts(table, input_ids):
    """The experts each token is sent to, shape input_ids.shape + (top_k,)."""
    return table[input_ids]


@register(kind="value", hint="The projection outputs pre (n values), post (n values) and the n x n mixing logits.",
          wrong=[16, 12, 8, 20])
def mhc_outputs_per_token():
    """How many numbers V4's mHC projection produces per token with n_hc = 4 streams.

    24 = 2n + n^2 outputs of the mHC projection in the V4 checkpoint."""
    n = 4
    return 2 * n + n * n


# ---------------------------------------------------------------- Engram and on-policy distillation (sections 4-5)
_g8 = torch.Generator().manual_seed(8)

_HASH_CASES = [
    (torch.tensor([115, 101, 108]), torch.tensor([3, 5]), 7, 2),            # the notebook's hand case
    (torch.tensor([115, 101, 108]), torch.tensor([3, 5]), 11, 2),
    (torch.tensor([5, 9, 2, 7, 7, 1]), torch.tensor([7, 11, 13]), 101, 3),
    (torch.randint(0, 256, (20,), generator=_g8), torch.tensor([2 ** 40 + 1, 2 ** 33 + 3, 2 ** 35 + 5]), 1_000_003, 3),
    (torch.tensor([4]), torch.tensor([3, 5, 9]), 13, 3),                     # shorter than the n-gram: padding only
]


def _hash_sum(ids, m, p, n):        # wrong: adds the products instead of XOR
    out = ids * m[0]
    for k in range(1, n):
        out = out + torch.cat([ids.new_zeros(k), ids[:-k] if k < len(ids) else ids[:0]])[:len(ids)] * m[k]
    return out % p


def _hash_unshifted(ids, m, p, n):  # wrong: every factor is the current token
    out = ids * m[0]
    for k in range(1, n):
        out = out ^ (ids * m[k])
    return out % p


def _hash_swapped(ids, m, p, n):    # wrong: multipliers applied to the tokens in the opposite order
    return engram_ngram_hash.reference(ids, m.flip(0)[-n:] if len(m) >= n else m, p, n)


@register(cases=_HASH_CASES,
          hint="prev_k = the ids shifted right by k with 0 in front (torch.cat([zeros(k), ids[:-k]])). "
               "mix = ids * m[0], then mix = mix ^ (prev_k * m[k]) for k = 1..n-1; return mix % prime.",
          wrong=[_hash_sum, _hash_unshifted, _hash_swapped])
def engram_ngram_hash(ids, multipliers, prime, n):
    """Engram (arXiv 2601.07372, §2.2; official demo): multiplicative-XOR hash of the n-gram ending at each
    position."""
    T = len(ids)
    mix = ids * multipliers[0]
    for k in range(1, n):
        prev = torch.cat([ids.new_zeros(min(k, T)), ids[:max(T - k, 0)]])
        mix = torch.bitwise_xor(mix, prev * multipliers[k])
    return torch.remainder(mix, prime)


@register(cases=[(torch.tensor([[0.75, 0.25]]).log(), torch.tensor([[0.5, 0.5]]).log()),
                 (torch.randn(5, 7, generator=_g8), torch.randn(5, 7, generator=_g8)),
                 (torch.randn(3, 4, generator=_g8) * 4, torch.randn(3, 4, generator=_g8) * 4),
                 (torch.randn(6, 3, generator=_g8), torch.randn(6, 3, generator=_g8))],
          hint="log_q = log_softmax(student), log_p = log_softmax(teacher); per position sum q * (log_q - log_p) over "
               "the vocabulary (the STUDENT's probabilities weight it); then the mean over positions.",
          wrong=[lambda s, t: (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1).mean(),
                 lambda s, t: (F.softmax(s, -1) * (F.log_softmax(s, -1) - F.log_softmax(t, -1))).sum(),
                 lambda s, t: (F.softmax(s, -1) * (s - t)).sum(-1).mean()])
def opd_reverse_kl(student_logits, teacher_logits):
    """On-policy distillation's per-token loss: mean over positions of KL(student || teacher), full vocabulary."""
    log_q = F.log_softmax(student_logits, dim=-1)
    log_p = F.log_softmax(teacher_logits, dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1).mean()


@register(kind="value", hint="One row per (n-gram order, head): orders 2 and 3 are 2 orders, times 8 heads.",
          wrong=[8, 24, 2, 646_400])
def engram_rows_per_token():
    """Rows one Engram layer gathers per token in the official demo: (max_ngram - 1) * n_heads = 2 * 8."""
    return 16
