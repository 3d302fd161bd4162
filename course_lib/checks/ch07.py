"""Exercises of 07_sparse_attention: the lightning indexer, top-k selection, a compressed entry, V4's cache at 1M."""
import torch

from course_lib.checks.core import close, register


def _g(seed):
    return torch.Generator().manual_seed(seed)


@register(cases=[(torch.randn(3, 4, generator=_g(0)), torch.randn(6, 4, generator=_g(1)),
                  torch.rand(3, generator=_g(2))),
                 (torch.randn(2, 8, generator=_g(3)), torch.randn(5, 8, generator=_g(4)),
                  torch.rand(2, generator=_g(5)))],
          hint="V3.2 Eq. 1 for one query: I_s = sum_j w_j * ReLU(q_j . k_s). Dots (H, S) = q @ keys.T, ReLU them, "
               "then weight each head's row by w_j and sum over the heads.",
          wrong=[lambda q, k, w: w @ (q @ k.T),                          # forgot the ReLU
                 lambda q, k, w: torch.relu(w @ (q @ k.T)),              # ReLU after the sum over heads
                 lambda q, k, w: torch.relu(q @ k.T).sum(0)])            # forgot the head weights
def index_scores(q, keys, w):
    # q (H, d): one query's indexer heads, keys (S, d): one key per token, w (H,): the head weights.
    return w @ torch.relu(q @ keys.T)


@register(cases=[(torch.tensor([0.3, 2.0, -1.0, 0.7, 1.5]), 2), (torch.tensor([5.0, 1.0, 4.0, 3.0]), 3),
                 (torch.tensor([0.1, 0.9, 0.4]), 1)],
          hint="The k tokens with the LARGEST scores, returned as their positions in increasing order "
               "(torch.topk(...).indices, then sort).",
          wrong=[lambda s, k: torch.arange(k),                            # the first k tokens
                 lambda s, k: torch.arange(len(s) - k, len(s)),           # the last k tokens (a sliding window)
                 lambda s, k: s.argsort()[:k].sort().values],             # the smallest scores
          compare=lambda expected, got: torch.equal(torch.as_tensor(got).long(), expected))
def topk_tokens(scores, k):
    # V3.2 Eq. 2's selection for one query, as sorted positions.
    return scores.topk(k).indices.sort().values


@register(cases=[(torch.randn(4, 3, generator=_g(6)), torch.randn(4, 3, generator=_g(7)),
                  torch.randn(4, 3, generator=_g(8))),
                 (torch.randn(2, 5, generator=_g(9)), torch.zeros(2, 5), torch.zeros(2, 5))],
          hint="The pooling of transformers' DeepseekV4 compressors (V4 report §2.3.1 Eq. 9-17 for CSA, §2.3.2 "
               "Eq. 20-23 for HCA, as cited there): per feature, softmax over the m tokens of the window of (Z + B), "
               "then the weighted sum of C over those tokens: (C * softmax(Z + B, dim=0)).sum(0). "
               "(The RMSNorm comes after; leave it out.)",
          wrong=[lambda c, z, b: (c * torch.softmax(z + b, dim=1)).sum(0),   # softmax over the features
                 lambda c, z, b: c.mean(0),                                  # a plain average
                 lambda c, z, b: (c * torch.softmax(z, dim=0)).sum(0)])      # forgot the positional bias
def pool_window(c, z, b):
    # c, z, b: (m, d) projections C, gate logits Z and positional bias B of one window's m tokens.
    return (c * torch.softmax(z + b, dim=0)).sum(0)


@register(kind="value",
          hint="Per CSA layer: 2^20 / 4 entries x (448 + 2 * 64 + 128 / 2) bytes (FP8 content, BF16 RoPE, FP4 "
               "indexer key); per HCA layer: 2^20 / 128 entries x (448 + 128) bytes; every layer: 128 window entries "
               "x 576 bytes. V4-Pro: 30 CSA + 31 HCA layers. GB = 1e9 bytes.",
          wrong=[49.15, 5.69, 5.54, 2 * 5.18, 0.146],      # 5.69: indexer keys in FP8 instead of FP4
          compare=lambda expected, got: close(expected, got, rtol=1e-2))
def v4_pro_cache_gb_1m():
    csa = 2 ** 20 // 4 * (448 + 2 * 64 + 128 // 2)
    hca = 2 ** 20 // 128 * (448 + 2 * 64)
    window = 128 * (448 + 2 * 64)
    return (30 * csa + 31 * hca + 61 * window) / 1e9


@register(kind="value",
          hint="A CSA layer keeps its top-k compressed entries plus the sliding window: V4-Flash has index_topk = 512 "
               "and a window of 128 tokens. How many KV entries does one query attend to, at any long context?",
          wrong=[512, 128, 2048, 2 ** 20 // 4])
def v4_flash_csa_entries_per_query():
    return 512 + 128
