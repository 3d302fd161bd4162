"""Exercises of 08_deep_training: one Sinkhorn-Knopp step and the whole algorithm, the hyper-connection update,
a Newton-Schulz step, Muon's update scale, mHC's outputs per token. (Hash routing and Engram: ch09; the OPD loss: ch06.)"""
import math

import torch
import torch.nn.functional as F

from course_lib import mhc
from course_lib.checks.core import register

_G = torch.Generator().manual_seed(8)


@register(cases=[(torch.tensor([[2.0, 1.0], [1.0, 1.0]]),), (torch.rand(3, 3, generator=_G) + 0.1,),
                 (torch.rand(4, 4, generator=_G) + 0.01,), (torch.ones(2, 2),)],
          hint=("Two normalisations in a fixed order: first the columns, then the rows.",
                "T_c divides every column by its sum, T_r every row by its sum: return T_r(T_c(m)) (mHC; V4 §2.2).",
                "m = m / m.sum(0, keepdim=True); return m / m.sum(1, keepdim=True)"),
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
          hint=("Mix the streams with B, then write the layer's output into every stream with weight C_i.",
                "X_{l+1} = B_l X_l + C_l F_l(A_l X_l) (V4 §2.2, Eq. 1): B X is a matrix product, C y an outer product.",
                "return mix @ streams + post[:, None] * layer_output[None, :]"),
          wrong=[lambda x, y, b, c: b.T @ x + c[:, None] * y[None, :],                 # B transposed
                 lambda x, y, b, c: x + c[:, None] * y[None, :],                       # plain residual, no mixing
                 lambda x, y, b, c: b @ x + y[None, :]])                               # forgot C
def hc_update(streams, layer_output, mix, post):
    """The n residual streams after one hyper-connected sub-layer."""
    return mix @ streams + post[:, None] * layer_output[None, :]


@register(cases=[(torch.tensor([[0.6, 0.0], [0.0, 0.3]]), (3.4445, -4.7750, 2.0315)),
                 (torch.randn(3, 5, generator=_G) / 4, (2.0, -1.5, 0.5)),
                 (torch.randn(4, 2, generator=_G) / 3, (3.4445, -4.7750, 2.0315))],
          hint=("Only matrix products: build the Gram matrix M M^T once and reuse it.",
                "M_k = a M + b (M M^T) M + c (M M^T)^2 M (V4 §2.4, Eq. 28).",
                "a, b, c = abc; gram = x @ x.T; return a * x + b * gram @ x + c * gram @ gram @ x"),
          wrong=[lambda x, abc: abc[0] * x + abc[1] * (x @ x.T) @ x + abc[2] * (x @ x.T) @ x,   # (M M^T) not squared
                 lambda x, abc: abc[0] * x + abc[1] * x ** 3 + abc[2] * x ** 5,  # element-wise powers
                 lambda x, abc: abc[0] * x + abc[1] * (x @ x.T) @ x])             # dropped the fifth-order term
def newton_schulz_step(x, abc):
    """One Newton-Schulz step with coefficients abc = (a, b, c)."""
    a, b, c = abc
    gram = x @ x.T
    return a * x + b * gram @ x + c * gram @ gram @ x


@register(cases=[(64, 256, 0.18), (4096, 1024, 0.18), (10, 10, 0.2), (3, 12, 1.0)],
          hint=("What is the RMS of an n x m matrix whose min(n, m) singular values are all 1?",
                "Its RMS is 1/sqrt(max(n, m)); multiply by gamma * sqrt(max(n, m)) to make it gamma (V4 Algorithm 1).",
                "return gamma * math.sqrt(max(n, m))"),
          wrong=[lambda n, m, g: g * math.sqrt(min(n, m)), lambda n, m, g: g * math.sqrt(n * m),
                 lambda n, m, g: max(1, n / m) ** 0.5])
def muon_scale(n, m, gamma):
    """The factor Muon multiplies the orthogonalised update of an n x m weight by."""
    return gamma * math.sqrt(max(n, m))


@register(kind="value", hint=("Count what the projection must produce: A_l, C_l and B_l.",
                              "A_l has n entries, C_l has n and B_l has n x n: 2n + n^2."),
          wrong=[16, 12, 8, 20])
def mhc_outputs_per_token():
    """How many numbers V4's mHC projection produces per token with n_hc = 4 streams.

    24 = 2n + n^2 outputs of the mHC projection in the V4 checkpoint."""
    n = 4
    return 2 * n + n * n


def _sk_rows_first(logits, iters):
    m = logits.exp()
    for _ in range(iters):
        m = m / m.sum(1, keepdim=True)
        m = m / m.sum(0, keepdim=True)
    return m


def _sk_no_exp(logits, iters):
    m = logits.abs() + 1e-3
    for _ in range(iters):
        m = m / m.sum(0, keepdim=True)
        m = m / m.sum(1, keepdim=True)
    return m


def _sk_softmax_rows(logits, iters):
    return torch.softmax(logits, dim=-1)


@register(cases=[(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 1),
                 (torch.randn(3, 3, generator=_G) * 2, 3),
                 (torch.randn(4, 4, generator=_G, dtype=torch.float64) * 2, 20),
                 (torch.randn(4, 4, generator=_G), 5)],
          hint=("Make the entries positive first, then repeat the step of exercise 1 `iters` times.",
                "M^(0) = exp(B~);  M^(t) = T_r(T_c(M^(t-1))) for t = 1..t_max (V4 §2.2, Eq. 8).",
                "m = logits.exp()\nfor _ in range(iters):\n    m = m / m.sum(0, keepdim=True)\n"
                "    m = m / m.sum(1, keepdim=True)\nreturn m"),
          wrong=[_sk_rows_first, _sk_no_exp, _sk_softmax_rows])
def sinkhorn_knopp(logits, iters):
    """Build the module: Sinkhorn-Knopp from (n, n) logits, t_max = iters (the library without its epsilon)."""
    return mhc.sinkhorn_knopp(logits, iters, eps=0.0)
