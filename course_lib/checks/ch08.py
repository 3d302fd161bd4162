"""Exercises of 08_v4_building_blocks: hyper-connections, Sinkhorn-Knopp, Newton-Schulz, Muon's scale, hash routing."""
import math

import torch

from .core import register

_G = torch.Generator().manual_seed(8)


@register(cases=[(torch.tensor([[2.0, 1.0], [1.0, 1.0]]),), (torch.rand(3, 3, generator=_G) + 0.1,),
                 (torch.rand(4, 4, generator=_G) + 0.01,), (torch.ones(2, 2),)],
          hint="V4 Eq. 8: first divide every column by its sum (T_c), then every row by its sum (T_r). "
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
          hint="V4 Eq. 1: X_{l+1} = B_l X_l + C_l F_l(A_l X_l). Here streams X is (n, d), the layer output "
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
          hint="V4 Eq. 28: M_k = a M + b (M M^T) M + c (M M^T)^2 M, with A = M @ M.T.",
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
    """How many numbers V4's mHC projection produces per token with n_hc = 4 streams (V4 §3.3: 'only 24')."""
    n = 4
    return 2 * n + n * n
